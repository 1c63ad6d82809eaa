"""Qwen3.5 and Qwen3.6 (dense and MoE): the hybrid Gated DeltaNet body with a dense MLP on every layer,
or routed experts plus a gated shared expert on every layer.

The ``...ForConditionalGeneration`` checkpoints keep their language model under
``model.language_model``; with a ``vision_config`` they also read images (`models.vision`).
"""

from __future__ import annotations

import torch
from torch import nn

from helexa_torch.models.hybrid import HybridCausalLM
from helexa_torch.models.layers import GatedMLP
from helexa_torch.models.moe import SharedExpertMoE
from helexa_torch.models.vision import VisionLanguage


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


class Qwen3_5ForConditionalGeneration(VisionLanguage, Qwen3_5ForCausalLM):
    architecture_name = "Qwen3_5ForConditionalGeneration"

    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        super().__init__(config, device, max_positions)
        self.setup_vision(config, device, max_positions)


class Qwen3_5MoeForConditionalGeneration(VisionLanguage, Qwen3_5MoeForCausalLM):
    architecture_name = "Qwen3_5MoeForConditionalGeneration"

    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        super().__init__(config, device, max_positions)
        self.setup_vision(config, device, max_positions)
