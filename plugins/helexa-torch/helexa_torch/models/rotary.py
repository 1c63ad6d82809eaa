"""Rotary position embeddings: cos/sin tables for every position, for every scaling a config can name.

Frequencies come from transformers' own rope initialisers (linear, yarn, llama3, ...), so they
match the reference exactly. Two types change with the length of the text: `dynamic` (NTK) and
`longrope`. transformers recomputes them per forward from the longest position in the batch;
a paged engine needs one fixed table, so (like vLLM) each position gets the frequencies of a
text just long enough to hold it. Within the original context both give the same numbers.

The tables are computed on the CPU (never on the meta device a model is built on) and then
moved to the model's device; they are plain attributes, so `to_empty` and dtype casts leave them.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_parameters(config, layer_type: str | None = None) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    params = dict(params)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def rotary_dim(config, head_dim: int, layer_type: str | None = None) -> int:
    factor = rope_parameters(config, layer_type).get(
        "partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)
    )
    return int(head_dim * factor)


def _exponents(dim: int) -> torch.Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def position_frequencies(
    config, head_dim: int, max_positions: int, layer_type: str | None = None
) -> tuple[torch.Tensor, float]:
    """Angles ``[max_positions, rotary_dim / 2]`` and the factor cos and sin are scaled by."""
    with torch.device("cpu"):  # the model may be built under the meta device
        return _angles(config, head_dim, max_positions, layer_type)


def _angles(config, head_dim: int, max_positions: int, layer_type: str | None) -> tuple[torch.Tensor, float]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = rope_parameters(config, layer_type)
    rope_type = params.get("rope_type", "default")
    dim = rotary_dim(config, head_dim, layer_type)
    positions = torch.arange(max_positions, dtype=torch.float32)
    cpu = torch.device("cpu")
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    if rope_type == "default":
        inv_freq, scaling = 1.0 / params["rope_theta"] ** _exponents(dim), 1.0
    elif rope_type == "dynamic":  # NTK: the base grows with the text's length past the original context
        original, factor = config.max_position_embeddings, params["factor"]
        length = torch.clamp(positions + 1, min=original)[:, None]
        base = params["rope_theta"] * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return positions[:, None] / base ** _exponents(dim)[None, :], 1.0
    elif rope_type == "longrope":  # short factors inside the original context, long ones past it
        original = params["original_max_position_embeddings"]
        short, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, cpu, **kwargs)
        long, _ = ROPE_INIT_FUNCTIONS[rope_type](config, cpu, seq_len=original + 1, **kwargs)
        inv_freq = torch.where((positions < original)[:, None], short[None, :], long[None, :])
        return positions[:, None] * inv_freq, scaling
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, cpu, **kwargs)
    return torch.outer(positions, inv_freq.float()), scaling


class Rotary(nn.Module):
    """Rotates the first ``dim`` channels of each query and key head by its position's angles."""

    def __init__(
        self, config, head_dim: int, max_positions: int, device: torch.device, layer_type: str | None = None
    ) -> None:
        super().__init__()
        angles, scaling = position_frequencies(config, head_dim, max_positions, layer_type)
        self.dim = angles.shape[1] * 2
        emb = torch.cat((angles, angles), dim=-1)
        self.cos = (emb.cos() * scaling).to(device)
        self.sin = (emb.sin() * scaling).to(device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.dim < x.shape[-1]:  # partial rotary: the rest of each head passes through
            return torch.cat((self._rotate(x[..., : self.dim], cos, sin), x[..., self.dim :]), dim=-1)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x.float() * cos + rotated.float() * sin).to(x.dtype)
