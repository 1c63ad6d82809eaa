"""Gemma 2 and Gemma 3 (text): (1 + w) RMS norms around both attention and MLP, embeddings scaled by
sqrt(hidden), GeGLU MLPs, a query scale from `query_pre_attn_scalar`, sliding-window and global
layers in the config's pattern (Gemma 3 with a rotary base of their own), and tanh soft-capping of
attention scores and final logits (Gemma 2)."""

from __future__ import annotations

from torch import nn

from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.context import KVCache, StepContext
from helexa_torch.models.layers import Attention, GatedMLP, RMSNorm


class SandwichLayer(nn.Module):
    """Norms before and after each of attention and MLP, the residual added after the second."""

    def __init__(self, config, attention: Attention, mlp: nn.Module) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(size, eps, offset=1.0)
        self.post_attention_layernorm = RMSNorm(size, eps, offset=1.0)
        self.pre_feedforward_layernorm = RMSNorm(size, eps, offset=1.0)
        self.post_feedforward_layernorm = RMSNorm(size, eps, offset=1.0)

    def forward(self, x, residual, positions, ctx: StepContext, cache: KVCache):
        residual = x if residual is None else x + residual
        x = self.self_attn(self.input_layernorm(residual), positions, ctx, cache)
        residual = residual + self.post_attention_layernorm(x)
        x = self.mlp(self.pre_feedforward_layernorm(residual))
        return self.post_feedforward_layernorm(x), residual


class Gemma2ForCausalLM(CausalLM):
    norm_offset = 1.0
    scale_embeddings = True
    qk_norm = False

    def make_layer(self, config, index: int) -> SandwichLayer:
        sliding = self.layer_type(config, index) == "sliding_attention"
        attention = Attention(
            config,
            index,
            qkv_bias=bool(getattr(config, "attention_bias", False)),
            o_bias=bool(getattr(config, "attention_bias", False)),
            qk_norm=self.qk_norm,
            norm_offset=1.0,
            sliding_window=config.sliding_window if sliding else None,
            scale=config.query_pre_attn_scalar**-0.5,
            softcap=getattr(config, "attn_logit_softcapping", None),
        )
        return SandwichLayer(config, attention, GatedMLP(config))


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    qk_norm = True
