"""Mixture of experts: a router picks the top-k experts of each token, and each expert runs once per step
over all the tokens routed to it (one matmul pair per active expert; no loop over tokens).

Expert weights are stacked, ``gate_up_proj [experts, 2 * intermediate, hidden]`` and
``down_proj [experts, hidden, intermediate]``, the layout transformers 5 uses in memory;
checkpoints that store one matrix per expert are loaded into the stack (see `causal_lm`).
"""

from __future__ import annotations

import torch
from torch import nn

from helexa_torch.models.layers import GatedMLP, activation


class Experts(nn.Module):
    def __init__(self, config, num_experts: int, intermediate_size: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate_size))
        self.parts = {"gate": (0, intermediate_size), "up": (intermediate_size, intermediate_size)}
        self.act = activation(config)

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x [tokens, hidden]``, ``chosen``/``weights [tokens, top_k]`` -> the weighted sum of experts."""
        top_k = chosen.shape[1]
        flat = chosen.flatten()
        order = flat.argsort(stable=True)  # routed (token, slot) pairs grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        out = torch.zeros_like(x)
        start = 0
        for expert, count in enumerate(counts):
            if not count:
                continue
            pairs = order[start : start + count]
            start += count
            tokens = pairs // top_k
            gate, up = torch.matmul(x[tokens], self.gate_up_proj[expert].t()).chunk(2, dim=-1)
            y = torch.matmul(self.act(gate) * up, self.down_proj[expert].t())
            out.index_add_(0, tokens, (y * weights.flatten()[pairs, None]).to(out.dtype))
        return out


class SparseMoE(nn.Module):
    """Softmax router, top-k, optionally renormalised over the chosen experts (Mixtral, Qwen3-MoE)."""

    def __init__(
        self, config, num_experts: int, top_k: int, intermediate_size: int, renormalize: bool
    ) -> None:
        super().__init__()
        self.top_k = top_k
        self.renormalize = renormalize
        self.gate = nn.Linear(config.hidden_size, num_experts, bias=False)
        self.experts = Experts(config, num_experts, intermediate_size)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.route(x)
        return self.experts(x, chosen, weights)


class SharedExpertMoE(SparseMoE):
    """Routed experts plus an always-on shared expert scaled by a sigmoid gate (Qwen3-Next, Qwen3.5-MoE)."""

    def __init__(
        self,
        config,
        num_experts: int,
        top_k: int,
        intermediate_size: int,
        renormalize: bool,
        shared_size: int,
    ) -> None:
        super().__init__(config, num_experts, top_k, intermediate_size, renormalize)
        self.shared_expert = GatedMLP(config, intermediate_size=shared_size)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return super().forward(x) + shared
