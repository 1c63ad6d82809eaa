"""Linear layers whose weights oneDNN has laid out for this CPU, once, as they load.

On a CPU, ``F.linear`` in float32 goes to MKL's sgemm, which repacks the weight matrix on
every call and, on AMD processors, takes a generic code path. oneDNN's matmul over a weight
reordered ahead of time into its blocked layout is 1.3-2x faster for one row (a single decode
stream) and 2.2-2.6x faster for sixteen (a decode batch) on this project's 2-core EPYC, with
float32 results within a few ulps of MKL's (``benchmarks/cpu_linear.py``). Decoding on a CPU
is mostly these matmuls, so every model served there gains.

The reordered weight replaces the original: no second copy is kept. The one exception is a
head tied to the embedding: lookups still read the embedding in the ordinary layout, so the
head gets a packed copy of its own (``vocab x hidden`` more bytes, which the harness counts
in the model's memory), because on small models the head is a fifth of the decode matmuls.
Only plain ``nn.Linear`` layers of the decoder are packed: quantized layers and the vision
tower (transformers' own modules) are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from helexa_torch.weights import release_freed_memory

ROWS_HINT = 16
"""The batch size oneDNN tunes the layout for: a decode batch. One row is within 15 % of its
own best with it; sixteen rows are 1.6x slower with a layout tuned for one."""

PACKABLE = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in oneDNN's layout (inference only)."""

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.nbytes = weight.numel() * weight.element_size()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        self.bias = bias

    @classmethod
    def of(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def can_pack(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Whether linear layers on ``device`` (in ``dtype``, if given) are packed when served."""
    usable = device.type == "cpu" and torch.backends.mkldnn.is_available()
    return usable and (dtype is None or dtype in PACKABLE)


def packable(module: nn.Module | None) -> bool:
    """A plain float ``nn.Linear`` (a quantized layer is a subclass, and stays as it is)."""
    return type(module) is nn.Linear and module.weight.dtype in PACKABLE


def pack_linears(root: nn.Module) -> int:
    """Replace every `packable` layer under ``root`` with a `PackedLinear`; the count."""
    # Only the parents are listed up front: each original layer is dropped as soon as its packed
    # replacement exists, so packing needs one layer's weight more memory, not the model's.
    parents = [module for module in root.modules() if any(map(packable, module.children()))]
    count = 0
    for parent in parents:
        for name in [name for name, child in parent.named_children() if packable(child)]:
            setattr(parent, name, PackedLinear.of(getattr(parent, name)))
            release_freed_memory()  # the original's pages, before the next layer's copy
            count += 1
    return count
