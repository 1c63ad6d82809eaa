"""A mixture-of-experts model in the helexa engine against transformers `generate`, on this machine.

A random Qwen3-MoE checkpoint of a few hundred MB (8 experts, 2 active, built here) is
loaded through the torch harness; decode tokens/s with 1 and 16 concurrent greedy streams
is compared with transformers `generate` on the same checkpoint, one request after
another (and, for reference, as one static batch of 16). Prints JSON.

    python benchmarks/moe_throughput.py [--tokens 64] [--layers 8]
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


def checkpoint(folder: Path, layers: int):
    from model_load import smollm2_gguf
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        hidden_size=512,
        intermediate_size=1024,
        moe_intermediate_size=512,
        num_experts=8,
        num_experts_per_tok=2,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=49_152,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config).eval()
    model.save_pretrained(folder)
    gguf = smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return model


def transformers_tok_s(model, tokens: int) -> dict:
    def run(batch: int) -> float:
        ids = torch.tensor([PROMPT] * batch)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    run(1)  # warm-up
    return {
        "single_tok_s": round(tokens / run(1), 1),
        "static_batch_16_tok_s": round(16 * tokens / run(16), 1),
    }


async def helexa_tok_s(folder: Path, tokens: int) -> dict:
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
    spec = ModelSpec(model_id="moe", options={"path": str(folder), "dtype": "float32", "kv_cache_mb": 256})
    await harness.load(spec, [0], lambda *_: None)

    async def stream() -> None:
        request = GenerationRequest(
            request_id="b",
            prompt=Prompt(text="", token_ids=PROMPT),
            sampling=SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True),
        )
        async for _ in harness.generate("moe", request):
            pass

    async def tok_s(streams: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(streams)))
        return round(streams * tokens / (time.perf_counter() - start), 1)

    await tok_s(1)  # warm-up
    result = {"single_tok_s": await tok_s(1), "streams_16_tok_s": await tok_s(16)}
    await harness.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "moe"
        model = checkpoint(folder, args.layers)
        size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        hf = transformers_tok_s(model, args.tokens)
        del model
        ours = asyncio.run(helexa_tok_s(folder, args.tokens))
    print(
        json.dumps(
            {
                "benchmark": "moe_throughput",
                "model": f"random Qwen3-MoE, {args.layers} layers, 8 experts (2 active), fp32",
                "weights_mb": round(size_mb),
                "tokens_per_request": args.tokens,
                "threads": torch.get_num_threads(),
                "transformers": hf,
                "helexa": ours,
                "ratios": {
                    "single_vs_transformers": round(ours["single_tok_s"] / hf["single_tok_s"], 2),
                    "streams_16_vs_transformers_sequential": round(
                        ours["streams_16_tok_s"] / hf["single_tok_s"], 2
                    ),
                    "streams_16_vs_transformers_static_batch": round(
                        ours["streams_16_tok_s"] / hf["static_batch_16_tok_s"], 2
                    ),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
