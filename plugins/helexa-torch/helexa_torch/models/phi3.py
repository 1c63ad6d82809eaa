"""Phi-3 and Phi-3.5: Llama's block with q/k/v and gate/up already fused in the checkpoint, and
longrope scaling for the long-context variants."""

from __future__ import annotations

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.layers import Attention, DecoderLayer, GatedMLP


class Phi3ForCausalLM(CausalLM):
    def make_layer(self, config, index: int) -> DecoderLayer:
        attention = Attention(config, index, sliding_window=getattr(config, "sliding_window", None))
        return DecoderLayer(config, index, attention, GatedMLP(config))
