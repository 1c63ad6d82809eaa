"""Tensor parallelism on the CPU: one model on one rank against the same model split over two gloo ranks.

A random Llama checkpoint of a few hundred MB (built here, SmolLM2's tokenizer) is loaded
through the torch harness with ``tensor_parallel = 1`` (one engine using every core) and with
``tensor_parallel = 2`` (rank 0 in this process, rank 1 a worker process, the cores split
between them); decode tokens/s with 1 and 16 concurrent greedy streams, side by side in one
run, and each rank's weight memory. One rank on one thread is measured too, as a control: on a
busy machine an OpenMP pool of several threads loses more to contention than two processes of
one thread each, which would otherwise pass for a gain of the split. On a CPU the ranks share
one memory bus: tensor parallelism is for fitting a model across GPUs. Prints JSON.

    python benchmarks/tensor_parallel.py [--tokens 32] [--layers 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch

from helexa.neuron.harness import GenerationRequest, HarnessContext, MemoryLedger, Prompt, SamplingParams
from helexa.plugins import load_plugins
from helexa.wire.fleet import DeviceInfo, ModelSpec

PROMPT = list(range(1000, 1032))


def checkpoint(folder: Path, layers: int) -> int:
    from model_load import smollm2_gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=49_152,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    gguf = smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


async def tok_s(folder: Path, tokens: int, ranks: int, threads: int | None = None) -> dict:
    devices = [DeviceInfo(index=0, name="cpu", vram_total_mb=20_000, kind="cpu")]
    plugins = load_plugins()
    harness = plugins.harnesses.get("torch")(
        HarnessContext(
            name="torch",
            options={},
            devices=devices,
            ledger=MemoryLedger(devices),
            model_roots=[folder.parent],
            plugins=plugins,
        )
    )
    spec = ModelSpec(
        model_id="tp",
        tensor_parallel=ranks,
        options={"path": str(folder), "dtype": "float32", "kv_cache_mb": 128, "threads": threads},
    )
    started = time.perf_counter()
    loaded = await harness.load(spec, [0], lambda *_: None)
    load_s = time.perf_counter() - started
    served = harness.models["tp"]

    async def stream(i: int) -> None:
        request = GenerationRequest(
            request_id=f"b{i}",
            prompt=Prompt(text="", token_ids=PROMPT),
            sampling=SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True),
        )
        async for _ in harness.generate("tp", request):
            pass

    async def rate(streams: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(stream(i) for i in range(streams)))
        return round(streams * tokens / (time.perf_counter() - start), 1)

    await rate(1)  # warm-up
    result = {
        "single_tok_s": await rate(1),
        "streams_16_tok_s": await rate(16),
        "load_s": round(load_s, 1),
        "threads_per_rank": served.engine.threads,
        "rank_weights_mb": [
            round(b / 2**20) for b in [served.measured["weights"], *served.measured.get("ranks", [])]
        ],
        "reported_memory_mb": loaded.memory_mb,
    }
    await harness.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama"
        size = checkpoint(folder, args.layers)
        one = asyncio.run(tok_s(folder, args.tokens, 1))
        two = asyncio.run(tok_s(folder, args.tokens, 2))
        # A control: one rank on one thread tells the split's gain from OpenMP's on a busy machine.
        one_thread = asyncio.run(tok_s(folder, args.tokens, 1, threads=1))
    print(
        json.dumps(
            {
                "benchmark": "tensor_parallel",
                "model": f"random Llama, {args.layers} layers, hidden 1024, 16 heads (8 KV), fp32",
                "weights_mb": round(size / 2**20),
                "tokens_per_request": args.tokens,
                "tp1": one,
                "tp2": two,
                "tp1_one_thread": one_thread,
                "ratios": {
                    "single_tp2_vs_tp1": round(two["single_tok_s"] / one["single_tok_s"], 2),
                    "streams_16_tp2_vs_tp1": round(two["streams_16_tok_s"] / one["streams_16_tok_s"], 2),
                    "single_tp2_vs_tp1_one_thread": round(
                        two["single_tok_s"] / one_thread["single_tok_s"], 2
                    ),
                    "rank0_weights_tp2_vs_tp1": round(
                        two["rank_weights_mb"][0] / one["rank_weights_mb"][0], 2
                    ),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
