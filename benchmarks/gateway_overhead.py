"""What the gateway adds to its upstream: latency, time to first token, per-chunk delay, throughput, CPU.

Runs a mock neuron (benchmarks/mock_neuron.py) and `helexa --role gateway` in front
of it as subprocesses (one worker), then measures side by side, direct and through
the gateway:

- sequential non-streaming latency (p50, p99) and what the gateway adds;
- streams offered at a fixed rate: time to first token added (p50, p99) and the
  delay each chunk gains between the upstream sending it and the client seeing it;
- the same streams through ``/v1/messages`` (Anthropic translation), and the
  translation's CPU per chunk against the passthrough;
- closed-loop requests/s with 32 clients;
- the gateway's CPU time per request and per 16-chunk stream.

With ``--litellm`` LiteLLM's proxy (one worker, installed into a throwaway venv
by litellm_peer.py) is measured in the same run with the same load; without it,
LiteLLM's figures on this kind of machine (../shared/reference/perf-anchors.md,
LiteLLM 1.110.2 with one worker, same method) are printed beside ours.

    python benchmarks/gateway_overhead.py [--quick] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_seconds, helexa_process, median, percentile, serving
from _http import Connection
from litellm_peer import VERSION as LITELLM_VERSION
from litellm_peer import litellm_proxy

from helexa.testing import free_port

MODEL = "mock/model"
STREAMS = 1000  # enough that the CPU clock's 10 ms ticks do not matter
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).encode()
LITELLM_ANCHOR = {
    "added_p50_ms": 9.7,
    "added_p99_ms": 11.2,
    "max_rps": 130,
    "cpu_ms_per_request": 8.2,
    "cpu_ms_per_16_chunk_stream": 21.5,
    "stream_ttft_added_p50_ms_at_10_25_per_s": 13.3,
    "source": "perf-anchors.md, LiteLLM 1.110.2, 1 worker, same machine type",
}


async def sequential(port: int, n: int, headers: dict | None = None) -> list[float]:
    connection = Connection("127.0.0.1", port)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        status, _ = await connection.post("/v1/chat/completions", CHAT, headers)
        assert status == 200, status
        times.append(time.perf_counter() - start)
    await connection.close()
    return times


async def one_stream(port: int, path: str, body: bytes, headers: dict | None) -> tuple[float, list[float]]:
    connection = Connection("127.0.0.1", port)
    start = time.perf_counter()
    status, chunks = await connection.post(path, body, headers)
    assert status == 200, status
    await connection.close()
    first = next(t for t, data in chunks if b"tok 0" in data)
    wall_now, perf_now = time.time(), time.perf_counter()
    gains = []
    for arrived, data in chunks:
        for line in data.split(b"\n"):
            if b'"sent":' in line:  # the mock's send time, on the same clock
                sent = float(line.rsplit(b'"sent":', 1)[1].rstrip(b"}").split(b",")[0])
                gains.append((wall_now - (perf_now - arrived)) - sent)
    return first - start, gains


async def offered_streams(
    port: int, path: str, rate: float, seconds: float, chunks: int, headers: dict | None = None
) -> dict:
    body = stream_request(chunks)
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one_stream(port, path, body, headers)))
    results = await asyncio.gather(*tasks)
    ttfts = [r[0] for r in results]
    gains = [g for r in results for g in r[1]]
    return {
        "ttft_p50_ms": ms(median(ttfts)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "chunk_gain_p50_ms": ms(median(gains)) if gains else None,
        "chunk_gain_p99_ms": ms(percentile(gains, 99)) if gains else None,
        "streams": len(results),
    }


async def closed_loop(port: int, clients: int, seconds: float, headers: dict | None = None) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def client():
        nonlocal done
        connection = Connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            status, _ = await connection.post("/v1/chat/completions", CHAT, headers)
            assert status == 200
            done += 1
        await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - start)


def cpu_per(pid: int, run) -> tuple[float, object]:
    before = cpu_seconds(pid)
    result = run()
    return cpu_seconds(pid) - before, result


@contextlib.contextmanager
def mock_neuron() -> Iterator[int]:
    port = free_port()
    command = [sys.executable, str(Path(__file__).parent / "mock_neuron.py"), "--port", str(port)]
    with serving(command, f"http://127.0.0.1:{port}/models"):
        yield port


@dataclass
class Gateway:
    """A gateway under test, in front of the mock upstream."""

    name: str
    port: int
    pid: int
    headers: dict[str, str] | None = None
    anthropic: bool = False  # also serves /v1/messages


@contextlib.contextmanager
def helexa_gateway(upstream: int) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        config = Path(folder) / "gateway.toml"
        config.write_text(
            f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
            f'[poller]\ninterval_s = 2\n[[neurons]]\nname = "mock"\nendpoint = "http://127.0.0.1:{upstream}"\n'
        )
        with helexa_process(
            "gateway", config, f"http://127.0.0.1:{port}/health", env={"HELEXA_LOG_LEVEL": "warning"}
        ) as process:
            while not httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]:
                time.sleep(0.1)
            yield Gateway("helexa", port, process.pid, anthropic=True)


def measure(args) -> dict:
    """Every figure for each gateway, phase by phase, each phase interleaving direct and the gateways."""
    with mock_neuron() as upstream, contextlib.ExitStack() as stack:
        gateways = [stack.enter_context(helexa_gateway(upstream))]
        if args.litellm:
            port, pid, headers = stack.enter_context(litellm_proxy(upstream, MODEL))
            gateways.append(Gateway("litellm", port, pid, headers))
        results: dict[str, dict] = {gw.name: {} for gw in gateways}

        n = 100 if args.quick else 300
        asyncio.run(sequential(upstream, 20))
        for gw in gateways:
            asyncio.run(sequential(gw.port, 20, gw.headers))
        direct, through = [], {gw.name: [] for gw in gateways}
        for _ in range(3):  # interleave, so drift on a shared machine hits all alike
            direct += asyncio.run(sequential(upstream, n // 3))
            for gw in gateways:
                through[gw.name] += asyncio.run(sequential(gw.port, n // 3, gw.headers))
        for gw in gateways:
            times = through[gw.name]
            results[gw.name]["latency"] = {
                "direct_p50_ms": ms(median(direct)),
                "gateway_p50_ms": ms(median(times)),
                "added_p50_ms": ms(median(times) - median(direct)),
                "added_p99_ms": ms(percentile(times, 99) - percentile(direct, 99)),
            }

        seconds = 3 if args.quick else 6
        for rate in [20] if args.quick else [10, 25]:
            d = asyncio.run(offered_streams(upstream, "/v1/chat/completions", rate, seconds, 16))
            for gw in gateways:
                g = asyncio.run(
                    offered_streams(gw.port, "/v1/chat/completions", rate, seconds, 16, gw.headers)
                )
                row = {"direct": d, "gateway": g}
                if gw.anthropic:
                    row["gateway_anthropic"] = asyncio.run(
                        offered_streams(gw.port, "/v1/messages", rate, seconds, 16)
                    )
                row["ttft_added_p50_ms"] = ms((g["ttft_p50_ms"] - d["ttft_p50_ms"]) / 1000)
                row["ttft_added_p99_ms"] = ms((g["ttft_p99_ms"] - d["ttft_p99_ms"]) / 1000)
                if g["chunk_gain_p50_ms"] is not None:  # LiteLLM re-encodes chunks and drops the send stamp
                    row["chunk_delay_added_p50_ms"] = ms(
                        (g["chunk_gain_p50_ms"] - d["chunk_gain_p50_ms"]) / 1000
                    )
                results[gw.name].setdefault("streams", {})[f"{rate}_per_s"] = row

        loop_s = 3 if args.quick else 6
        direct_rps = asyncio.run(closed_loop(upstream, 32, loop_s))
        for gw in gateways:
            rps = asyncio.run(closed_loop(gw.port, 32, loop_s, gw.headers))
            results[gw.name]["max_rps"] = {"direct": round(direct_rps), "gateway": round(rps)}

        for gw in gateways:
            results[gw.name]["cpu"] = cpu_figures(gw)
    return results


def cpu_figures(gw: Gateway) -> dict[str, float]:
    """The gateway process's CPU per request and per stream (two lengths: the slope is the cost per chunk)."""
    requests = 300
    per_request, _ = cpu_per(gw.pid, lambda: asyncio.run(sequential(gw.port, requests, gw.headers)))
    routes = ["/v1/chat/completions", "/v1/messages"] if gw.anthropic else ["/v1/chat/completions"]
    streams = {}
    for chunks in (16, 64):
        for route in routes:
            body = stream_request(chunks)
            used, _ = cpu_per(
                gw.pid, lambda b=body, r=route: asyncio.run(_streams(gw.port, r, b, STREAMS, gw.headers))
            )
            streams[(route, chunks)] = used / STREAMS
    return cpu_summary(per_request / requests, streams)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def stream_request(chunks: int) -> bytes:
    """A streaming request both /v1/chat/completions and /v1/messages accept."""
    body = {
        "model": MODEL,
        "max_tokens": chunks,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return json.dumps(body).encode()


def cpu_summary(per_request: float, streams: dict[tuple[str, int], float]) -> dict[str, float]:
    def per_chunk(route: str) -> float:
        return (streams[(route, 64)] - streams[(route, 16)]) / 48

    openai_chunk = per_chunk("/v1/chat/completions")
    summary = {
        "ms_per_request": ms(per_request),
        "ms_per_16_chunk_stream": ms(streams[("/v1/chat/completions", 16)]),
        "us_per_chunk_passthrough": round(openai_chunk * 1e6, 1),
    }
    if ("/v1/messages", 16) in streams:
        anthropic_chunk = per_chunk("/v1/messages")
        summary |= {
            "ms_per_16_chunk_anthropic_stream": ms(streams[("/v1/messages", 16)]),
            "us_per_chunk_anthropic": round(anthropic_chunk * 1e6, 1),
            "anthropic_over_passthrough_per_chunk": round(anthropic_chunk / max(openai_chunk, 1e-9), 2),
        }
    return summary


async def _streams(port: int, path: str, body: bytes, count: int, headers: dict | None = None) -> None:
    for _ in range(count // 50):
        await asyncio.gather(*(_one(port, path, body, headers) for _ in range(50)))


async def _one(port: int, path: str, body: bytes, headers: dict | None) -> None:
    connection = Connection("127.0.0.1", port)
    status, _ = await connection.post(path, body, headers)
    assert status == 200
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--litellm",
        action="store_true",
        help=f"also measure LiteLLM {LITELLM_VERSION}'s proxy side by side (installed into a throwaway venv)",
    )
    args = parser.parse_args()
    results = measure(args)
    helexa = results["helexa"]
    peer = results.get("litellm")
    result = {"benchmark": "gateway_overhead", **results}
    if peer is None:
        result["litellm_anchor"] = LITELLM_ANCHOR
    reference = {
        "rps": peer["max_rps"]["gateway"] if peer else LITELLM_ANCHOR["max_rps"],
        "cpu": peer["cpu"]["ms_per_16_chunk_stream"]
        if peer
        else LITELLM_ANCHOR["cpu_ms_per_16_chunk_stream"],
    }
    against = "litellm_measured" if peer else "litellm_anchor"
    result["ratios"] = {
        f"rps_vs_{against}": round(helexa["max_rps"]["gateway"] / reference["rps"], 1),
        f"cpu_per_stream_vs_{against}": round(helexa["cpu"]["ms_per_16_chunk_stream"] / reference["cpu"], 3),
    }
    if peer:
        result["ratios"]["added_p50_vs_litellm_measured"] = round(
            helexa["latency"]["added_p50_ms"] / peer["latency"]["added_p50_ms"], 3
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
