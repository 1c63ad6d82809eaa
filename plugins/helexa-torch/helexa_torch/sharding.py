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
- Hybrids (Qwen3.5, Qwen3-Next): gated attention as above, with each query head's gate rows
  kept beside it. Gated DeltaNet layers split by key-head groups, each key head with the value
  heads that read it: the q and k rows (and convolution channels) of the rank's key heads, the
  v and z rows, the b and a rows, ``A_log`` and ``dt_bias`` of its value heads (Qwen3-Next's
  ``in_proj_qkvz``/``in_proj_ba`` are already grouped per key head, so a contiguous share is
  whole groups), out_proj's matching columns; the gated norm (per head dimension) is replicated.
  Each rank's state cache therefore holds only its heads' states.

A forward hook on each layer's token mixer (attention or linear attention) and MLP sums their
partial outputs across ranks: one all-reduce after each. A single-rank model has no hooks.
A vision model's tower is not split: rank 0 holds it whole and runs it once per image, and its
embeddings travel to the workers with the step (`engine.runner.Step.media`); workers skip its weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from helexa.errors import ApiError
from helexa_torch.models.gated_deltanet import GatedDeltaNet
from helexa_torch.models.hybrid import GatedAttention, HybridCausalLM, text_config
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
    linear_k_heads: int = 0
    """Hybrid models: the linear-attention key heads of the whole model (0: none)."""
    linear_v_heads: int = 0
    linear_k_dim: int = 0
    linear_v_dim: int = 0

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
        """A copy of ``config`` with this rank's share of heads and MLP width (in its text config)."""
        local = copy.deepcopy(config)
        text = text_config(local)
        text.num_attention_heads = self.local_heads
        text.num_key_value_heads = self.local_kv_heads
        text.head_dim = self.head_dim
        for name in INTERMEDIATES:
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                setattr(text, name, value // self.size)
        if self.linear_k_heads:
            text.linear_num_key_heads = self.linear_k_heads // self.size
            text.linear_num_value_heads = self.linear_v_heads // self.size
        return local


def plan(config, rank: int, size: int) -> ShardPlan:
    """The shard of rank ``rank``; a 400 naming ``tensor_parallel`` when the model cannot be split so."""
    config = text_config(config)
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
    linear = (0, 0, 0, 0)
    if getattr(config, "linear_num_key_heads", None):
        linear = (
            config.linear_num_key_heads,
            config.linear_num_value_heads,
            config.linear_key_head_dim,
            config.linear_value_head_dim,
        )
        for what, count in (("linear-attention key", linear[0]), ("linear-attention value", linear[1])):
            if count % size:
                raise refuse(f"tensor_parallel={size} does not divide the model's {count} {what} heads")
    return ShardPlan(rank, size, heads, kv_heads, head_dim, *linear)


def check_layers(model: nn.Module, architecture: str) -> None:
    """Refuse a model whose layers are not our attention, linear-attention and MLP blocks (fallback,
    third party)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    splittable = layers is not None and all(
        isinstance(_mixer(layer), Attention | GatedAttention | GatedDeltaNet)
        and isinstance(getattr(layer, "mlp", None), GatedMLP | SparseMoE)
        for layer in layers
    )
    if not splittable:
        raise refuse(
            f"{architecture} cannot be split across tensor-parallel ranks (only models made of attention, "
            "linear-attention and MLP or MoE blocks can); load it with tensor_parallel=1"
        )


def _mixer(layer: nn.Module) -> nn.Module | None:
    """A layer's token mixer: attention, or a hybrid's linear attention."""
    mixer = getattr(layer, "self_attn", None)
    return mixer if mixer is not None else getattr(layer, "linear_attn", None)


def attach_reducers(model: nn.Module, all_reduce: Callable[[torch.Tensor], None]) -> None:
    """Sum each layer's token-mixer and MLP outputs across ranks, in place, as they leave the block."""

    def hook(_module, _args, output: torch.Tensor) -> torch.Tensor:
        all_reduce(output)
        return output

    for layer in model.model.layers:
        _mixer(layer).register_forward_hook(hook)
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
    # A gated attention's query rows carry each head's gate after its query: twice the rows per head.
    q_head = shard.head_dim * (2 if isinstance(model, HybridCausalLM) else 1)
    q_rows = (rank * shard.local_heads * q_head, shard.local_heads * q_head)
    kv_rows = (shard.first_kv_head * shard.head_dim, shard.local_kv_heads * shard.head_dim)
    q_full, kv_full = shard.heads * q_head, shard.kv_heads * shard.head_dim
    for name, tensor in weights:
        target, key = model.route(name)
        if target.startswith("visual."):  # a vision tower: whole, on rank 0 (workers skip it)
            yield name, tensor
            continue
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
        elif shard.linear_k_heads:
            tensor = _linear_attention(tensor, kind, key, leaf, shard)
        yield name, tensor


def _linear_attention(tensor: torch.Tensor, kind: str, key, leaf: str, shard: ShardPlan) -> torch.Tensor:
    """A Gated DeltaNet tensor cut to the rank's key-head groups (each key head with its value heads).

    The q and k channels are cut by key heads and the v, z channels, b, a, ``A_log`` and ``dt_bias``
    by value heads; value head ``j`` reads key head ``j // (v_heads / k_heads)``, so contiguous shares
    of both stay together. Anything else (the gated norm's per-dimension weight) is replicated.
    """
    rank, size = shard.rank, shard.size
    k_heads, v_heads, k_dim, v_dim = (
        shard.linear_k_heads,
        shard.linear_v_heads,
        shard.linear_k_dim,
        shard.linear_v_dim,
    )
    local_k, local_v = k_heads // size, v_heads // size
    keys, values = (rank * local_k * k_dim, local_k * k_dim), (rank * local_v * v_dim, local_v * v_dim)
    heads = (rank * local_v, local_v)
    if kind == "conv1d" or (kind == "in_proj" and key == "qkv"):  # channels q | k | v
        q, k, v = tensor.split((k_heads * k_dim, k_heads * k_dim, v_heads * v_dim), dim=0)
        return torch.cat([_rows(q, 0, *keys), _rows(k, 0, *keys), _rows(v, 0, *values)])
    if kind == "in_proj" and key == "z":
        return _rows(tensor, 0, *values)
    if (kind == "in_proj" and key in ("b", "a")) or leaf in ("A_log", "dt_bias"):
        return _rows(tensor, 0, *heads)
    if kind in ("in_proj_qkvz", "in_proj_ba"):  # Qwen3-Next: interleaved per key-head group already
        return _split_share(tensor, 0, rank, size)
    if kind == "out_proj":
        return _rows(tensor, 1, *values)
    return tensor
