"""Qwen3: RMS norms on each head's queries and keys before rotary embedding; no q/k/v biases.
Qwen3-MoE is the same attention with routed experts in place of the dense MLP on its sparse layers."""

from __future__ import annotations

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.layers import Attention, DecoderLayer, GatedMLP
from helexa_torch.models.moe import SparseMoE


class Qwen3ForCausalLM(CausalLM):
    def make_layer(self, config, index: int) -> DecoderLayer:
        bias = bool(getattr(config, "attention_bias", False))
        attention = Attention(config, index, qkv_bias=bias, o_bias=bias, qk_norm=True)
        return DecoderLayer(config, index, attention, self.make_mlp(config, index))

    def make_mlp(self, config, index: int):
        return GatedMLP(config)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    def make_mlp(self, config, index: int):
        sparse = (
            index not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0
            and (index + 1) % config.decoder_sparse_step == 0
        )
        if not sparse:
            return GatedMLP(config)
        return SparseMoE(
            config,
            config.num_experts,
            config.num_experts_per_tok,
            config.moe_intermediate_size,
            renormalize=bool(config.norm_topk_prob),
        )
