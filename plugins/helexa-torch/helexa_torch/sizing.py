"""How much a model takes, and of what: its dtype, its KV cache, the CPU threads of its engine,
and the resident memory a load actually used."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from helexa.errors import ApiError

MB = 1024 * 1024
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ApiError(400, f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}", param="options.dtype")
    return DTYPES[name]


def kv_budget(options: dict[str, Any], device: torch.device, weight_bytes: int) -> int:
    """Bytes for the KV cache: as configured, else 90 % of what the GPU has free after the weights."""
    if options.get("kv_cache_mb"):
        return int(options["kv_cache_mb"]) * MB
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(0, int(free * 0.9) - weight_bytes)
    return 1024 * MB


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resident_mb() -> tuple[int, int]:
    """The process's resident memory now and its high-water mark, in MB (0, 0 where unknown)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        return 0, 0
