"""Qwen3: RMS norms on each head's queries and keys before rotary embedding; no q/k/v biases."""

from __future__ import annotations

from helexa_torch.models.layers import Attention, CausalLM, DecoderLayer, GatedMLP


class Qwen3ForCausalLM(CausalLM):
    def make_layer(self, config, index: int) -> DecoderLayer:
        bias = bool(getattr(config, "attention_bias", False))
        attention = Attention(config, index, qkv_bias=bias, o_bias=bias, qk_norm=True)
        return DecoderLayer(config, index, attention, GatedMLP(config))
