"""Qwen3.5 and Qwen3.6 (dense and MoE): the hybrid Gated DeltaNet body with a dense MLP on every layer,
or routed experts plus a gated shared expert on every layer.

The ``...ForConditionalGeneration`` checkpoints (with a vision tower) are served for text: the
language model's weights are read from under ``model.language_model`` and the tower is skipped.
"""

from __future__ import annotations

from torch import nn

from helexa_torch.models.hybrid import HybridCausalLM
from helexa_torch.models.layers import GatedMLP
from helexa_torch.models.moe import SharedExpertMoE


class Qwen3_5ForCausalLM(HybridCausalLM):
    def make_mlp(self, config, index: int) -> nn.Module:
        return GatedMLP(config)


class Qwen3_5MoeForCausalLM(HybridCausalLM):
    def make_mlp(self, config, index: int) -> nn.Module:
        return SharedExpertMoE(
            config,
            config.num_experts,
            config.num_experts_per_tok,
            config.moe_intermediate_size,
            renormalize=True,
            shared_size=config.shared_expert_intermediate_size,
        )


class Qwen3_5ForConditionalGeneration(Qwen3_5ForCausalLM):
    architecture_name = "Qwen3_5ForConditionalGeneration"


class Qwen3_5MoeForConditionalGeneration(Qwen3_5MoeForCausalLM):
    architecture_name = "Qwen3_5MoeForConditionalGeneration"
