"""Mixtral: Mistral's attention with a softmax top-2 router over eight SwiGLU experts per layer."""

from __future__ import annotations

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.layers import Attention, DecoderLayer
from helexa_torch.models.moe import SparseMoE


class MixtralForCausalLM(CausalLM):
    renames = (
        (".block_sparse_moe.", ".mlp."),
        (".w1.", ".gate_proj."),
        (".w3.", ".up_proj."),
        (".w2.", ".down_proj."),
    )

    def make_layer(self, config, index: int) -> DecoderLayer:
        attention = Attention(config, index, sliding_window=getattr(config, "sliding_window", None))
        moe = SparseMoE(
            config,
            config.num_local_experts,
            config.num_experts_per_tok,
            config.intermediate_size,
            renormalize=True,
        )
        return DecoderLayer(config, index, attention, moe)
