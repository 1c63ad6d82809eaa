"""Llama 2 and 3 (every rope scaling), SmolLM2, TinyLlama; Mistral is Llama with a sliding window."""

from __future__ import annotations

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.layers import Attention, DecoderLayer, GatedMLP


class LlamaForCausalLM(CausalLM):
    def make_layer(self, config, index: int) -> DecoderLayer:
        bias = bool(getattr(config, "attention_bias", False))
        attention = Attention(
            config, index, qkv_bias=bias, o_bias=bias, sliding_window=self.sliding_window(config)
        )
        return DecoderLayer(
            config, index, attention, GatedMLP(config, bias=bool(getattr(config, "mlp_bias", False)))
        )

    def sliding_window(self, config) -> int | None:
        return None


class MistralForCausalLM(LlamaForCausalLM):
    def sliding_window(self, config) -> int | None:
        return getattr(config, "sliding_window", None)
