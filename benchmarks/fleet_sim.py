"""A simulated fleet: 20 neurons, 100 models, a Zipf request mix; how lazy loading and eviction behave.

Everything runs in this one process over real loopback sockets: 20 neurons with
simulated GPUs (echo harness), a gateway in front of them, and a client sending
requests whose models follow a Zipf distribution. For each eviction strategy it
reports the hit rate (requests served by an already loaded model), loads and
evictions per 1,000 requests, and p50/p99 of the routing decision alone (choosing a
replica, or ranking neurons and choosing victims for a cold model).

Parking is off here (``neuron.park_mb = 0``), so every swap is a cold load;
`benchmarks/swap.py` runs the same simulation with parking on and off, with load and
wake times, through `run`'s ``swap`` argument.

    python benchmarks/fleet_sim.py [--requests 2000] [--neurons 20] [--models 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import percentile

from helexa.gateway.app import Gateway, create_app
from helexa.neuron.app import Neuron
from helexa.neuron.app import create_app as neuron_app
from helexa.settings import Catalogue, GatewaySettings, NeuronSettings
from helexa.testing import serve_app


def catalogue(models: int, rng: random.Random, swap: Swap | None = None) -> dict:
    entries = []
    for i in range(models):
        size = rng.choice([2_000, 4_000, 8_000, 16_000, 24_000])
        options: dict = {"size_mb": size}
        if swap is not None:
            options |= {
                "load_seconds": size / swap.load_mb_per_s * swap.time_scale,
                "wake_seconds": size / swap.wake_mb_per_s * swap.time_scale,
            }
        entries.append(
            {
                "id": f"sim/model-{i:03d}",
                "harness": "echo",
                "vram_mb": size,
                "priority": rng.choice([0, 0, 0, 5, 10]),
                "options": options,
            }
        )
    return {"models": entries}


@dataclass(frozen=True)
class Swap:
    """How long swaps take in a simulation that times them: a cold load reads the weights at
    ``load_mb_per_s``, a wake copies them back at ``wake_mb_per_s``. The echo harness sleeps
    that long scaled by ``time_scale``, so that a run stays short and loads still overlap
    requests; the seconds reported are the unscaled swap times of the loads and wakes the
    neurons counted (measured sleeps, scaled back, would multiply the loopback overhead too)."""

    park_mb: int
    load_mb_per_s: float = 2_000
    wake_mb_per_s: float = 20_000
    time_scale: float = 0.002


def zipf_mix(models: int, requests: int, rng: random.Random, s: float = 1.1) -> list[int]:
    weights = [1 / (rank + 1) ** s for rank in range(models)]
    order = list(range(models))
    rng.shuffle(order)  # popularity is not tied to size
    return [order[i] for i in rng.choices(range(models), weights=weights, k=requests)]


def timed(target, name: str, samples: list[float]) -> None:
    original = getattr(target, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            samples.append(time.perf_counter() - start)

    setattr(target, name, wrapper)


async def drive(url: str, mix: list[str], concurrency: int) -> int:
    failures = 0
    queue = list(reversed(mix))

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while queue:
            model = queue.pop()
            response = await http.post(
                f"{url}/v1/chat/completions",
                json={"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
            )
            if response.status_code != 200:
                failures += 1
                print(response.status_code, response.text[:300], file=sys.stderr)

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return failures


def swaps(neurons: list[Neuron]) -> tuple[dict[str, float], dict[str, float]]:
    """Cold loads and wakes per model, as the neurons counted them."""
    cold: dict[str, float] = {}
    woken: dict[str, float] = {}
    for neuron in neurons:
        for family in neuron.metrics.load_seconds.collect():
            for s in family.samples:
                if s.name.endswith("_count") and s.labels["outcome"] == "loaded":
                    cold[s.labels["model"]] = cold.get(s.labels["model"], 0) + s.value
        for family in neuron.metrics.wakes.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels["outcome"] == "ok":
                    woken[s.labels["model"]] = woken.get(s.labels["model"], 0) + s.value
    return cold, woken


def run(strategy: str, args: argparse.Namespace, swap: Swap | None = None) -> dict:
    rng = random.Random(7)
    models = catalogue(args.models, rng, swap)
    mix_ids = zipf_mix(args.models, args.requests, rng)
    mix = [models["models"][i]["id"] for i in mix_ids]
    with contextlib.ExitStack() as stack:
        urls, neurons = {}, []
        for n in range(args.neurons):
            park_mb = swap.park_mb if swap else 0
            settings = msgspec.convert(
                {
                    "neuron": {"default_harness": "echo", "listen": "127.0.0.1:0", "park_mb": park_mb},
                    "harness": {"echo": {"tokens_per_second": 0}},
                    "simulated_devices": [{"name": f"sim-{n}-{d}", "memory_mb": 24_000} for d in range(2)],
                },
                NeuronSettings,
            )
            neurons.append(Neuron(settings))
            urls[f"n{n:02d}"] = stack.enter_context(serve_app(neuron_app(neurons[-1])))
        settings = msgspec.convert(
            {
                "gateway": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
                "poller": {"interval_s": 1.0},
                "eviction": {"strategy": strategy, "min_residency_s": 0},
                "neurons": [{"name": name, "endpoint": url} for name, url in urls.items()],
            },
            GatewaySettings,
        )
        gateway = Gateway(settings, msgspec.convert(models, Catalogue))
        hits: list[float] = []
        placements: list[float] = []
        timed(gateway.fleet, "least_busy", hits)
        timed(gateway.lifecycle, "_plan", placements)
        url = stack.enter_context(serve_app(create_app(gateway)))
        deadline = time.monotonic() + 30
        while not all(node.healthy for node in gateway.fleet.nodes.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.perf_counter()
        failures = asyncio.run(drive(url, mix, args.concurrency))
        wall = time.perf_counter() - started
        metrics = gateway.metrics
        loads = sum(s.value for m in metrics.loads.collect() for s in m.samples if s.name.endswith("_count"))
        evictions = sum(
            s.value for m in metrics.evictions.collect() for s in m.samples if s.name.endswith("_total")
        )
        cold, woken = swaps(neurons)
    decisions = hits + placements
    per_1000 = 1000 / args.requests
    timing = {}
    if swap is not None:
        sizes = {m["id"]: m["options"]["size_mb"] for m in models["models"]}
        seconds = sum(n * sizes[m] / swap.load_mb_per_s for m, n in cold.items()) + sum(
            n * sizes[m] / swap.wake_mb_per_s for m, n in woken.items()
        )
        timing = {
            # Each model's first load is cold whatever happens; parking can only spare the reloads.
            "first_loads_per_1000": round(len(set(mix)) * per_1000, 1),
            "cold_loads_per_1000": round(sum(cold.values()) * per_1000, 1),
            "wakes_per_1000": round(sum(woken.values()) * per_1000, 1),
            "swap_seconds_per_request": round(seconds / args.requests, 3),
        }
    return {
        **timing,
        "requests": args.requests,
        "failed": failures,
        "hit_rate": round(1 - loads / args.requests, 3),
        "loads_per_1000": round(loads * per_1000, 1),
        "evictions_per_1000": round(evictions * per_1000, 1),
        "decision_ms": {
            "p50": round(percentile(decisions, 50) * 1000, 4),
            "p99": round(percentile(decisions, 99) * 1000, 4),
        },
        "placement_ms": {
            "p50": round(percentile(placements, 50) * 1000, 4),
            "p99": round(percentile(placements, 99) * 1000, 4),
            "count": len(placements),
        },
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--neurons", type=int, default=20)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    results = {strategy: run(strategy, args) for strategy in ("lru", "priority")}
    print(
        json.dumps(
            {
                "benchmark": "fleet_sim",
                "neurons": args.neurons,
                "models": args.models,
                "devices_per_neuron": 2,
                "device_mb": 24_000,
                "zipf_s": 1.1,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
