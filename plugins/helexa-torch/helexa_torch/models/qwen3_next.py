"""Qwen3-Next: the hybrid Gated DeltaNet body with routed experts plus a gated shared expert
(dense MLPs on ``mlp_only_layers``).

Its checkpoints store the linear-attention input projections interleaved per key-head group
(``in_proj_qkvz``: each group's q, k, v, z in turn; ``in_proj_ba`` likewise); they are reordered
into Qwen3.5's layout (all q, all k, all v; then z; b; a) as they stream in, so both families
share one layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from helexa_torch.models.hybrid import HybridCausalLM, text_config
from helexa_torch.models.layers import GatedMLP
from helexa_torch.models.moe import SharedExpertMoE


class Qwen3NextForCausalLM(HybridCausalLM):
    def make_mlp(self, config, index: int) -> nn.Module:
        sparse = (
            index not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0
            and (index + 1) % config.decoder_sparse_step == 0
        )
        if not sparse:
            return GatedMLP(config)
        return SharedExpertMoE(
            config,
            config.num_experts,
            config.num_experts_per_tok,
            config.moe_intermediate_size,
            renormalize=bool(config.norm_topk_prob),
            shared_size=config.shared_expert_intermediate_size,
        )

    def prepare_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return _ungroup(weights, text_config(self.config))


def _ungroup(weights: Iterable[tuple[str, torch.Tensor]], config) -> Iterator[tuple[str, torch.Tensor]]:
    groups = config.linear_num_key_heads
    per_group = config.linear_num_value_heads // groups
    k_dim, v_dim = config.linear_key_head_dim, config.linear_value_head_dim
    for name, tensor in weights:
        if name.endswith(".in_proj_qkvz.weight"):
            grouped = tensor.view(groups, -1, tensor.shape[-1])
            q, k, v, z = grouped.split([k_dim, k_dim, per_group * v_dim, per_group * v_dim], dim=1)
            flat = [part.reshape(-1, tensor.shape[-1]) for part in (q, k, v, z)]
            base = name.removesuffix("qkvz.weight")
            yield base + "qkv.weight", torch.cat(flat[:3])
            yield base + "z.weight", flat[3]
        elif name.endswith(".in_proj_ba.weight"):
            b, a = tensor.view(groups, 2 * per_group, -1).split([per_group, per_group], dim=1)
            base = name.removesuffix("ba.weight")
            yield base + "b.weight", b.reshape(-1, tensor.shape[-1])
            yield base + "a.weight", a.reshape(-1, tensor.shape[-1])
        else:
            yield name, tensor
