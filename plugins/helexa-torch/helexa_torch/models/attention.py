"""Attention over the paged KV cache: writing a step's keys and values, and reading them back.

Every architecture (and the transformers fallback) calls these three functions, so the
way the cache is laid out and read is decided in one place. The cache of one layer is
head-major, ``[kv_heads, blocks, block_size, head_dim]``: gathering a batch's blocks gives
a tensor already shaped for batched matmuls.

`AttentionSpec` carries what differs between architectures: the softmax scale, a sliding
window, and tanh soft-capping of the scores (Gemma 2). SDPA cannot soft-cap, so a capped
layer computes its scores explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helexa_torch.models.context import KVCache, PrefillSegment, StepContext


@dataclass(frozen=True)
class AttentionSpec:
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None = None
    softcap: float | None = None


def store_kv(cache: KVCache, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Write ``[tokens, kv_heads, head_dim]`` keys and values into their cache slots."""
    kv_heads, head_dim = k.shape[1], k.shape[2]
    cache.k.view(kv_heads, -1, head_dim).index_copy_(1, slots, k.transpose(0, 1))
    cache.v.view(kv_heads, -1, head_dim).index_copy_(1, slots, v.transpose(0, 1))


def decode_attention(q: torch.Tensor, ctx: StepContext, cache: KVCache, spec: AttentionSpec) -> torch.Tensor:
    """One query token per sequence ``[batch, heads, head_dim]`` against each sequence's cached context."""
    b, kv_heads, head_dim = q.shape[0], spec.kv_heads, spec.head_dim
    group = spec.heads // kv_heads
    keys = cache.k[:, ctx.decode_blocks].view(kv_heads, b, -1, head_dim)
    values = cache.v[:, ctx.decode_blocks].view(kv_heads, b, -1, head_dim)
    q = q.view(b, kv_heads, group, head_dim).transpose(0, 1)  # query heads of a group share a kv head
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() * spec.scale
    if spec.softcap is not None:
        scores = torch.tanh(scores / spec.softcap) * spec.softcap
    scores = scores + ctx.decode_mask.view(1, b, 1, -1)
    if spec.sliding_window is not None and keys.shape[2] > spec.sliding_window:
        slots = torch.arange(keys.shape[2], device=q.device)
        old = slots[None, :] < (ctx.decode_lens[:, None] - spec.sliding_window)
        scores = scores.masked_fill(old[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values)  # [kv_heads, batch, group, head_dim]
    return out.transpose(0, 1).reshape(b, spec.heads, head_dim)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segment: PrefillSegment,
    cache: KVCache,
    spec: AttentionSpec,
) -> torch.Tensor:
    """A chunk of one prompt ``[length, heads, head_dim]`` against the cached prefix and itself, causally."""
    total = segment.cached + segment.length
    if segment.cached:  # the whole sequence so far, from the cache: [kv_heads, total, head_dim]
        k = cache.k[:, segment.block_table].view(spec.kv_heads, -1, spec.head_dim)[:, :total]
        v = cache.v[:, segment.block_table].view(spec.kv_heads, -1, spec.head_dim)[:, :total]
    else:
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    mask = segment.mask
    if spec.sliding_window is not None and total > spec.sliding_window:
        query = torch.arange(segment.cached, total, device=q.device)[:, None]
        key = torch.arange(total, device=q.device)[None, :]
        mask = (key <= query) & (key > query - spec.sliding_window)
    q = q.transpose(0, 1)
    if spec.softcap is not None:
        return _explicit(q, k, v, mask, segment.cached, spec).transpose(0, 1)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(0),
        k.unsqueeze(0),
        v.unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        scale=spec.scale,
        enable_gqa=spec.kv_heads != spec.heads,
    )
    return out.squeeze(0).transpose(0, 1)


def _explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    cached: int,
    spec: AttentionSpec,
) -> torch.Tensor:
    """Attention with the scores in the open, for what SDPA cannot do (soft-capping)."""
    group = spec.heads // spec.kv_heads
    k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * spec.scale
    scores = torch.tanh(scores / spec.softcap) * spec.softcap
    if mask is None:
        length, total = q.shape[1], k.shape[1]
        query = torch.arange(cached, cached + length, device=q.device)[:, None]
        mask = torch.arange(total, device=q.device)[None, :] <= query
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
