"""How a model is split across tensor-parallel ranks, Megatron-style.

Each rank builds the same architecture from a *shrunken* config (its share of the attention
heads, KV heads and MLP width; the hidden size and vocabulary unchanged), so the layer
classes need no change at all. Checkpoint tensors are cut to the rank's slice as they
stream in (`shard_weights`), so a rank never holds more than its own weights plus one tensor:

- q/k/v projections: rows of the rank's query heads and of the KV heads those heads read.
  When there are fewer KV heads than ranks, each KV head is replicated on the ranks whose
  query heads share it.
- gate/up projections (dense MLPs, every MoE expert, shared experts): rows of the rank's
  share of the intermediate width.
- o and down projections: the matching columns; their biases stay on rank 0 only, so the
  sum over ranks adds each bias once.
- MoE: every rank holds every expert, each cut to its share of the expert's intermediate
  width (the router is replicated). Memory splits N ways and every rank does the same work
  whatever the routing picks, with no all-to-all.
- Embeddings and norms are replicated; the LM head is only used on rank 0, where sampling is.

A forward hook on each layer's attention and MLP sums their partial outputs across ranks:
one all-reduce after attention, one after the MLP. A single-rank model has no hooks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from helexa.errors import ApiError
from helexa_torch.models.layers import Attention, GatedMLP
from helexa_torch.models.moe import SparseMoE

INTERMEDIATES = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size")
"""Config fields of MLP widths that are split across ranks (those the config has)."""


def refuse(message: str) -> ApiError:
    return ApiError(400, message, param="tensor_parallel", code="tensor_parallel_unsupported")


@dataclass(frozen=True)
class ShardPlan:
    """Rank ``rank`` of ``size``: which heads it holds, and the config its shard is built from."""

    rank: int
    size: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def local_heads(self) -> int:
        return self.heads // self.size

    @property
    def local_kv_heads(self) -> int:
        return self.kv_heads // self.size if self.kv_heads % self.size == 0 else 1

    @property
    def first_kv_head(self) -> int:
        if self.kv_heads % self.size == 0:
            return self.rank * self.local_kv_heads
        return self.rank // (self.size // self.kv_heads)  # replicated: the KV head of this rank's queries

    def config(self, config):
        """A copy of ``config`` with this rank's share of heads and MLP width."""
        local = copy.deepcopy(config)
        local.num_attention_heads = self.local_heads
        local.num_key_value_heads = self.local_kv_heads
        local.head_dim = self.head_dim
        for name in INTERMEDIATES:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                setattr(local, name, value // self.size)
        return local


def plan(config, rank: int, size: int) -> ShardPlan:
    """The shard of rank ``rank``; a 400 naming ``tensor_parallel`` when the model cannot be split so."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if heads % size:
        raise refuse(f"tensor_parallel={size} does not divide the model's {heads} attention heads")
    if kv_heads % size and size % kv_heads:
        raise refuse(
            f"tensor_parallel={size} neither divides the model's {kv_heads} KV heads "
            "nor is a multiple of them"
        )
    for name in INTERMEDIATES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0 and value % size:
            raise refuse(f"tensor_parallel={size} does not divide the model's {name} ({value})")
    return ShardPlan(rank, size, heads, kv_heads, head_dim)


def check_layers(model: nn.Module, architecture: str) -> None:
    """Refuse a model whose layers are not our attention and MLP blocks (hybrid, fallback, third party)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    splittable = layers is not None and all(
        isinstance(getattr(layer, "self_attn", None), Attention)
        and isinstance(getattr(layer, "mlp", None), GatedMLP | SparseMoE)
        for layer in layers
    )
    if not splittable:
        raise refuse(
            f"{architecture} cannot be split across tensor-parallel ranks (only models made of attention "
            "and MLP or MoE blocks can); load it with tensor_parallel=1"
        )


def attach_reducers(model: nn.Module, all_reduce: Callable[[torch.Tensor], None]) -> None:
    """Sum each layer's attention and MLP outputs across ranks, in place, as they leave the block."""

    def hook(_module, _args, output: torch.Tensor) -> torch.Tensor:
        all_reduce(output)
        return output

    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(hook)
        layer.mlp.register_forward_hook(hook)


def _rows(tensor: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    return tensor.narrow(dim, start, length)


def _split_share(tensor: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    share = tensor.shape[dim] // size
    return tensor.narrow(dim, rank * share, share)


def shard_weights(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], shard: ShardPlan
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint stream cut to ``shard``'s slices, in checkpoint naming (see the module docstring)."""
    rank, size = shard.rank, shard.size
    q_rows = (rank * shard.local_heads * shard.head_dim, shard.local_heads * shard.head_dim)
    kv_rows = (shard.first_kv_head * shard.head_dim, shard.local_kv_heads * shard.head_dim)
    q_full, kv_full = shard.heads * shard.head_dim, shard.kv_heads * shard.head_dim
    for name, tensor in weights:
        target, key = model.route(name)
        owner, _, leaf = target.rpartition(".")
        kind = owner.rpartition(".")[2]
        if kind == "qkv_proj":
            if key == "q":
                tensor = _rows(tensor, 0, *q_rows)
            elif key in ("k", "v"):
                tensor = _rows(tensor, 0, *kv_rows)
            else:  # fused in the checkpoint (Phi-3)
                q, k, v = tensor.split((q_full, kv_full, kv_full), dim=0)
                tensor = torch.cat([_rows(q, 0, *q_rows), _rows(k, 0, *kv_rows), _rows(v, 0, *kv_rows)])
        elif kind in ("o_proj", "down_proj"):
            if leaf == "bias":
                tensor = tensor if rank == 0 else torch.zeros_like(tensor)
            else:
                tensor = _split_share(tensor, 1, rank, size)
        elif kind == "gate_up_proj":
            if key is None:  # fused in the checkpoint: both halves, each cut
                gate, up = tensor.chunk(2, dim=0)
                tensor = torch.cat([_split_share(gate, 0, rank, size), _split_share(up, 0, rank, size)])
            else:
                tensor = _split_share(tensor, 0, rank, size)
        elif kind == "experts" and leaf == "gate_up_proj":
            if key is None:  # stacked [experts, 2 * intermediate, hidden]
                gate, up = tensor.chunk(2, dim=1)
                tensor = torch.cat([_split_share(gate, 1, rank, size), _split_share(up, 1, rank, size)], 1)
            else:  # one expert's gate or up [intermediate, hidden]
                tensor = _split_share(tensor, 0, rank, size)
        elif kind == "experts" and leaf == "down_proj":
            tensor = _split_share(tensor, tensor.dim() - 1, rank, size)
        yield name, tensor
