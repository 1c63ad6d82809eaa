"""CPU linear layers: ``F.linear`` (MKL's sgemm) against helexa's oneDNN-packed weights.

For the projection shapes of a few-hundred-MB Qwen3.5 (hidden 1024) at 1, 16 and 256 rows
(one decode stream, a decode batch, a prompt chunk), in float32 and bfloat16: milliseconds
per call with the weights read from memory (eight copies of each matrix, cycled, so none
stays in cache), the speedup, and the largest difference from a float64 reference next to
MKL's own. Prints one JSON object.

    .venv/bin/python benchmarks/cpu_linear.py
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from helexa_torch.models.packed import PackedLinear

SHAPES = {"in_proj": (1024, 3088), "out_proj": (1024, 1024), "gate_up": (1024, 6144), "down": (3072, 1024)}
COPIES = 8


def per_call_ms(layers, x: torch.Tensor, repeats: int = 10) -> float:
    with torch.inference_mode():
        for layer in layers:
            layer(x)
        start = time.perf_counter()
        for _ in range(repeats):
            for layer in layers:
                layer(x)
    return (time.perf_counter() - start) / (repeats * len(layers)) * 1000


def main() -> None:
    torch.manual_seed(0)
    result: dict[str, object] = {"threads": torch.get_num_threads()}
    for dtype in (torch.float32, torch.bfloat16):
        for name, (fan_in, fan_out) in SHAPES.items():
            plain = [nn.Linear(fan_in, fan_out, bias=False, dtype=dtype) for _ in range(COPIES)]
            packed = [PackedLinear.of(layer) for layer in plain]
            for rows in (1, 16, 256):
                x = torch.randn(rows, fan_in, dtype=dtype)
                mkl, ours = per_call_ms(plain, x), per_call_ms(packed, x)
                key = f"{str(dtype).removeprefix('torch.')}_{name}_{rows}"
                result[f"{key}_linear_ms"] = round(mkl, 3)
                result[f"{key}_packed_ms"] = round(ours, 3)
                result[f"{key}_speedup"] = round(mkl / ours, 2)
                if rows == 16:
                    with torch.inference_mode():
                        exact = F.linear(x.double(), plain[0].weight.double())
                        result[f"{key}_error_linear"] = float((plain[0](x).double() - exact).abs().max())
                        result[f"{key}_error_packed"] = float((packed[0](x).double() - exact).abs().max())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
