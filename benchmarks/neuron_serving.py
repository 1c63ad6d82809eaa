"""What the neuron's serving layer costs: echo harness over HTTP vs the same harness in-process.

Runs a neuron (echo harness, unthrottled) as a subprocess and drives 1, 16 and 64
concurrent streams; measures chunks per second and the neuron's CPU seconds per
1,000 chunks. Then calls the echo harness directly (no HTTP, no serving layer)
for the same streams. Prints one JSON object.

    python benchmarks/neuron_serving.py [--tokens 256]
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
from _common import cpu_seconds, helexa_process

from helexa.neuron.harness import GenerationRequest, HarnessContext, MemoryLedger, SamplingParams
from helexa.plugins import load_plugins
from helexa.testing import free_port
from helexa.wire.fleet import DeviceInfo, ModelSpec

MODEL = "bench/echo"


async def http_streams(url: str, concurrency: int, tokens: int) -> int:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": tokens,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "tick tock " * 8}],
    }

    async def one(client: httpx.AsyncClient) -> int:
        chunks = 0
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
        return chunks

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(concurrency))))


async def direct_streams(concurrency: int, tokens: int) -> int:
    devices = [DeviceInfo(index=0, name="sim", vram_total_mb=10_000, kind="simulated")]
    context = HarnessContext(
        name="echo", options={"tokens_per_second": 0}, devices=devices, ledger=MemoryLedger(devices)
    )
    harness = load_plugins().harnesses.get("echo")(context)
    await harness.load(ModelSpec(model_id=MODEL), [0], lambda *_: None)
    prompt = await harness.tokenize(MODEL, "tick tock " * 8)
    sampling = SamplingParams(max_tokens=tokens, ignore_eos=True)

    async def one() -> int:
        request = GenerationRequest(request_id="b", prompt=prompt, sampling=sampling)
        return sum([1 async for _ in harness.generate(MODEL, request)])

    return sum(await asyncio.gather(*(one() for _ in range(concurrency))))


MIN_SECONDS = 2.0  # repeat rounds until this much wall time, so CPU clock ticks are meaningful


def rounds(run, cpu_clock) -> dict[str, float]:
    run()  # warm-up
    chunks, cpu0, t0 = 0, cpu_clock(), time.perf_counter()
    while time.perf_counter() - t0 < MIN_SECONDS:
        chunks += run()
    wall, cpu = time.perf_counter() - t0, cpu_clock() - cpu0
    return {
        "chunks": chunks,
        "chunks_per_s": round(chunks / wall),
        "cpu_s_per_1000_chunks": round(cpu / chunks * 1000, 4),
    }


def measure_http(url: str, pid: int, concurrency: int, tokens: int) -> dict[str, float]:
    return rounds(lambda: asyncio.run(http_streams(url, concurrency, tokens)), lambda: cpu_seconds(pid))


def measure_direct(concurrency: int, tokens: int) -> dict[str, float]:
    return rounds(lambda: asyncio.run(direct_streams(concurrency, tokens)), time.process_time)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64])
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "neuron.toml"
        config.write_text(
            f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "echo"\nmax_running = 256\n'
            f'[harness.echo]\ntokens_per_second = 0\n[[simulated_devices]]\nname = "sim"\nmemory_mb = 10000\n'
            f'[[default_models]]\nmodel_id = "{MODEL}"\n'
        )
        url = f"http://127.0.0.1:{port}"
        with helexa_process("neuron", config, f"{url}/health") as process:
            while not httpx.get(f"{url}/models").json():
                time.sleep(0.05)
            results = {}
            for n in args.concurrency:
                http = measure_http(url, process.pid, n, args.tokens)
                direct = measure_direct(n, args.tokens)
                results[str(n)] = {
                    "http": http,
                    "in_process": direct,
                    "cpu_ratio_http_over_in_process": round(
                        http["cpu_s_per_1000_chunks"] / max(direct["cpu_s_per_1000_chunks"], 1e-9), 1
                    ),
                }
    print(
        json.dumps(
            {"benchmark": "neuron_serving", "tokens_per_stream": args.tokens, "streams": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
