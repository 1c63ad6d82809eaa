"""What one engine step tells the model: where each token's key and value go, and how each sequence attends.

A forward pass takes the tokens of one engine step flattened into one dimension
(``[tokens, hidden]``): first one token per decoding sequence, then the chunks of
sequences being prefilled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PrefillSegment:
    """A chunk of one sequence's prompt in this step."""

    start: int
    """Index of its first token in the flat batch."""
    length: int
    cached: int
    """Tokens of this sequence already in the cache before this chunk."""
    block_table: torch.Tensor
    """Cache blocks of the sequence, in order (long, on the device)."""
    mask: torch.Tensor | None = None
    """Boolean [length, cached + length] visibility, when not plain causal."""


@dataclass
class StepContext:
    slot_mapping: torch.Tensor
    """Cache slot of every token in the flat batch (block * block_size + offset)."""
    num_decode: int = 0
    decode_blocks: torch.Tensor | None = None
    """[sequences, max_blocks] block tables of the decoding sequences."""
    decode_mask: torch.Tensor | None = None
    """[sequences, max_blocks * block_size] additive mask hiding slots past each sequence's end."""
    decode_lens: torch.Tensor | None = None
    """[sequences] tokens in each decoding sequence's context, this step's token included."""
    prefills: list[PrefillSegment] = field(default_factory=list)
    states: Any = None
    """Hybrid models: the step's view of the recurrent-state cache (`engine.state_cache.StateStep`)."""
    media: Any = None
    """Vision models, in a step with images: embeddings for the image tokens and 3D positions
    (`engine.media.StepMedia`)."""


@dataclass
class KVCache:
    """One layer's paged cache: [kv_heads, blocks, block_size, head_dim] for keys and for values."""

    k: torch.Tensor
    v: torch.Tensor
