"""Hybrid models: Gated DeltaNet linear-attention layers interleaved with gated full attention.

The layer order comes from the config's ``layer_types``. Full-attention layers keep keys and
values in the paged KV cache like any model (only they get a cache: the engine allocates
``num_layers`` caches, one per attention layer); linear-attention layers keep their per-sequence
state in the state cache the engine allocates beside it (``linear_layers`` of them).

Every norm here scales by ``(1 + weight)`` in float32. Full attention gates its output with a
per-channel sigmoid that comes out of the query projection (each head's query is followed by
its gate), and rotates only the first ``partial_rotary_factor`` of each head.
"""

from __future__ import annotations

import torch
from torch import nn

from helexa_torch.models.attention import AttentionSpec, decode_attention, prefill_attention, store_kv
from helexa_torch.models.causal_lm import Backbone, CausalLM
from helexa_torch.models.context import KVCache, StepContext
from helexa_torch.models.gated_deltanet import GatedDeltaNet
from helexa_torch.models.layers import RMSNorm
from helexa_torch.models.rotary import Rotary

LINEAR, FULL = "linear_attention", "full_attention"


def text_config(config):
    """The language model's config of a multimodal checkpoint (Qwen3.5's), or the config itself."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


class GatedAttention(nn.Module):
    """Grouped-query attention whose output is multiplied by ``sigmoid(gate)`` before ``o_proj``."""

    def __init__(self, config) -> None:
        super().__init__()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.spec = AttentionSpec(heads, kv_heads, head_dim, head_dim**-0.5)
        q_size, kv_size = 2 * heads * head_dim, kv_heads * head_dim  # queries interleaved with gates
        self.split = (q_size, kv_size, kv_size)
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=bias)
        self.qkv_proj.parts = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}
        self.o_proj = nn.Linear(heads * head_dim, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, 1.0)
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, 1.0)
        self.rotary: Rotary | None = None

    @property
    def kv_heads(self) -> int:
        return self.spec.kv_heads

    @property
    def head_dim(self) -> int:
        return self.spec.head_dim

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: StepContext, cache: KVCache):
        n, spec = x.shape[0], self.spec
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q, gate = q.view(n, spec.heads, 2 * spec.head_dim).chunk(2, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k.view(n, spec.kv_heads, spec.head_dim))
        v = v.view(n, spec.kv_heads, spec.head_dim)
        q, k = self.rotary(positions, q, k)
        store_kv(cache, k, v, ctx.slot_mapping)
        out = torch.empty_like(q)
        if ctx.num_decode:
            out[: ctx.num_decode] = decode_attention(q[: ctx.num_decode], ctx, cache, spec)
        for segment in ctx.prefills:
            span = slice(segment.start, segment.start + segment.length)
            out[span] = prefill_attention(q[span], k[span], v[span], segment, cache, spec)
        return self.o_proj(out.reshape(n, -1) * torch.sigmoid(gate.reshape(n, -1)))


class HybridLayer(nn.Module):
    """Pre-norm block whose token mixer is either ``linear_attn`` or ``self_attn``."""

    def __init__(self, config, kind: str, mixer: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.kind = kind
        if kind == LINEAR:
            self.linear_attn = mixer
        else:
            self.self_attn = mixer
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, 1.0)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, 1.0)

    def forward(self, x, residual, positions, ctx: StepContext, cache: KVCache | None):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.linear_attn(x, ctx) if self.kind == LINEAR else self.self_attn(x, positions, ctx, cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class HybridCausalLM(CausalLM):
    """The shared body of Qwen3.5 and Qwen3-Next; subclasses say which MLP each layer has."""

    norm_offset = 1.0
    renames = (("model.language_model.", "model."),)
    """A multimodal checkpoint keeps its language model under ``model.language_model``."""

    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        nn.Module.__init__(self)
        config = text_config(config)
        self.config = config
        kinds = list(config.layer_types)[: config.num_hidden_layers]
        layers, linear = [], 0
        for index, kind in enumerate(kinds):
            if kind == LINEAR:
                mixer: nn.Module = GatedDeltaNet(config, linear)
                linear += 1
            elif kind == FULL:
                mixer = GatedAttention(config)
            else:
                raise ValueError(f"layer type {kind!r} is not supported (supported: {LINEAR}, {FULL})")
            layers.append(HybridLayer(config, kind, mixer, self.make_mlp(config, index)))
        self.model = Backbone(config, layers, self.norm_offset)
        attention = [layer.self_attn for layer in layers if layer.kind == FULL]
        if not attention:
            raise ValueError("a hybrid model needs at least one full-attention layer")
        self.num_layers = len(attention)
        """Layers with a KV cache (the full-attention ones)."""
        self.linear_layers = [layer.linear_attn for layer in layers if layer.kind == LINEAR]
        self.num_kv_heads, self.head_dim = attention[0].kv_heads, attention[0].head_dim
        self.vocab_size = config.vocab_size
        rotary = Rotary(config, self.head_dim, max_positions, device)
        for module in attention:
            module.rotary = rotary
        self.make_head(config)
        self.final_softcap = None
        self.embed_scale = None

    def make_mlp(self, config, index: int) -> nn.Module:
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, caches: list[KVCache]
    ) -> torch.Tensor:
        x = self.embed_inputs(input_ids, ctx)
        positions = self.rotary_positions(positions, ctx)
        residual, attention = None, iter(caches)
        for layer in self.model.layers:
            cache = next(attention) if layer.kind == FULL else None
            x, residual = layer(x, residual, positions, ctx, cache)
        x, _ = self.model.norm(x, residual)
        return x

    def embed_inputs(self, input_ids: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The step's input embeddings (a vision model places its images' here)."""
        return self.model.embed_tokens(input_ids)

    def rotary_positions(self, positions: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The positions attention rotates by (a vision model's are three-dimensional)."""
        return positions

    def route(self, name: str):
        target, key = super().route(name)
        for part in ("qkv", "z", "b", "a"):  # Qwen3.5's separate projections fill our fused one
            if f".in_proj_{part}." in target:
                return target.replace(f".in_proj_{part}.", ".in_proj."), part
        return target, key

    def skip(self, name: str) -> bool:
        # Multi-token-prediction heads and the vision tower are not part of text generation.
        return super().skip(name) or name.startswith(("mtp.", "model.visual.", "visual."))


def state_bytes_per_sequence(model: HybridCausalLM, dtype: torch.dtype) -> tuple[int, int]:
    """Bytes of one sequence's states (conv in the model's dtype, recurrent in float32, as it
    accumulates), and of the recurrent part alone."""
    size = torch.empty((), dtype=dtype).element_size()
    conv_bytes = recurrent_bytes = 0
    for layer in model.linear_layers:
        conv, recurrent = layer.state_shapes()
        conv_bytes += conv[0] * conv[1] * size
        recurrent_bytes += recurrent[0] * recurrent[1] * recurrent[2] * 4
    return conv_bytes + recurrent_bytes, recurrent_bytes
