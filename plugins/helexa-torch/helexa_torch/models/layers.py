"""The building blocks every architecture shares, written for the engine's batch layout.

Layers take the tokens of one engine step flattened to ``[tokens, hidden]`` and a
`StepContext` (see `context`); attention reads and writes the paged cache through the
functions of `attention`. Model files only say what differs.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from helexa_torch.models.attention import (
    AttentionSpec,
    decode_attention,
    prefill_attention,
    store_kv,
)
from helexa_torch.models.context import KVCache, StepContext
from helexa_torch.models.rotary import Rotary

ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


def activation(config):
    name = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class RMSNorm(nn.Module):
    """RMS normalisation in float32; with ``residual`` it adds first and returns the new residual too.

    ``offset=1`` is Gemma's form, which scales by ``1 + weight`` (computed in float32).
    """

    def __init__(self, size: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            out = (h * (self.offset + self.weight.float())).to(dtype)
        else:
            out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)


class Attention(nn.Module):
    """Grouped-query attention over the paged cache, with q/k/v fused into one projection."""

    def __init__(
        self,
        config,
        layer: int,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        norm_offset: float = 0.0,
        sliding_window: int | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.spec = AttentionSpec(
            heads, kv_heads, head_dim, scale or head_dim**-0.5, sliding_window or None, softcap or None
        )
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=qkv_bias)
        self.qkv_proj.parts = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=o_bias)
        eps = config.rms_norm_eps
        self.q_norm = RMSNorm(head_dim, eps, norm_offset) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps, norm_offset) if qk_norm else None
        self.rotary: Rotary | None = None  # shared between layers, set by the model

    @property
    def kv_heads(self) -> int:
        return self.spec.kv_heads

    @property
    def head_dim(self) -> int:
        return self.spec.head_dim

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, ctx: StepContext, cache: KVCache
    ) -> torch.Tensor:
        n, spec = x.shape[0], self.spec
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(n, spec.heads, spec.head_dim)
        k = k.view(n, spec.kv_heads, spec.head_dim)
        v = v.view(n, spec.kv_heads, spec.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        store_kv(cache, k, v, ctx.slot_mapping)
        out = torch.empty_like(q)
        if ctx.num_decode:
            out[: ctx.num_decode] = decode_attention(q[: ctx.num_decode], ctx, cache, spec)
        for segment in ctx.prefills:
            span = slice(segment.start, segment.start + segment.length)
            out[span] = prefill_attention(q[span], k[span], v[span], segment, cache, spec)
        return self.o_proj(out.view(n, -1))


class GatedMLP(nn.Module):
    """A gated feed-forward (SwiGLU, GeGLU) with gate and up projections fused."""

    def __init__(self, config, bias: bool = False, intermediate_size: int | None = None) -> None:
        super().__init__()
        size = intermediate_size or config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * size, bias=bias)
        self.gate_up_proj.parts = {"gate": (0, size), "up": (size, size)}
        self.down_proj = nn.Linear(size, config.hidden_size, bias=bias)
        self.act = activation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm block: attention and MLP each read a normalised residual stream and add to it.

    The residual add is deferred into the next norm (``norm(x, residual)``), so a layer
    returns ``(output, residual)`` and the stream is their sum.
    """

    def __init__(self, config, layer: int, attention: Attention, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, positions, ctx: StepContext, cache: KVCache):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, ctx, cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual
