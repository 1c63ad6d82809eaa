"""Qwen2 and Qwen2.5: Llama's design with biases on the q, k and v projections."""

from __future__ import annotations

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.layers import Attention, DecoderLayer, GatedMLP


class Qwen2ForCausalLM(CausalLM):
    def make_layer(self, config, index: int) -> DecoderLayer:
        window = None
        if getattr(config, "use_sliding_window", False) and index >= getattr(config, "max_window_layers", 0):
            window = getattr(config, "sliding_window", None)
        attention = Attention(config, index, qkv_bias=True, sliding_window=window)
        return DecoderLayer(config, index, attention, GatedMLP(config))
