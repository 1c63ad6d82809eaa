"""The building blocks every architecture shares, written for the engine's batch layout.

A forward pass takes the tokens of one engine step flattened into one dimension
(``[tokens, hidden]``): first one token per decoding sequence, then the chunks of
sequences being prefilled. `StepContext` says where each token's key and value go
in the paged cache and how each sequence attends. Model files only say what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PrefillSegment:
    """A chunk of one sequence's prompt in this step."""

    start: int
    """Index of its first token in the flat batch."""
    length: int
    cached: int
    """Tokens of this sequence already in the cache before this chunk."""
    block_table: torch.Tensor
    """Cache blocks of the sequence, in order (long, on the device)."""
    mask: torch.Tensor | None = None
    """Boolean [length, cached + length] visibility, when not plain causal."""


@dataclass
class StepContext:
    slot_mapping: torch.Tensor
    """Cache slot of every token in the flat batch (block * block_size + offset)."""
    num_decode: int = 0
    decode_blocks: torch.Tensor | None = None
    """[sequences, max_blocks] block tables of the decoding sequences."""
    decode_mask: torch.Tensor | None = None
    """[sequences, max_blocks * block_size] additive mask hiding slots past each sequence's end."""
    decode_lens: torch.Tensor | None = None
    """[sequences] tokens in each decoding sequence's context, this step's token included."""
    prefills: list[PrefillSegment] = field(default_factory=list)


@dataclass
class KVCache:
    """One layer's paged cache: [kv_heads, blocks, block_size, head_dim] for keys and for values."""

    k: torch.Tensor
    v: torch.Tensor


class RMSNorm(nn.Module):
    """RMS normalisation in float32; with ``residual`` it adds first and returns the new residual too."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is not None:
            x = x + residual
            residual = x
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)


class Rotary(nn.Module):
    """Rotary position embedding with cos/sin tables precomputed for every position.

    Frequencies come from transformers' rope initialisers, so every scaling type a
    config can name (default, linear, llama3, yarn, ...) matches the reference.
    """

    def __init__(self, config, head_dim: int, max_positions: int, device: torch.device) -> None:
        super().__init__()
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        params = getattr(config, "rope_parameters", None) or {}
        rope_type = params.get("rope_type", "default")
        if rope_type == "default":
            theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
            exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
            inv_freq = 1.0 / theta**exponents
            scaling = 1.0
        else:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
        positions = torch.arange(max_positions, dtype=torch.float32, device="cpu")
        freqs = torch.outer(positions, inv_freq.float().cpu())
        emb = torch.cat((freqs, freqs), dim=-1)
        # Plain attributes, not buffers: float32 tables that survive to_empty() and dtype casts.
        self.cos = (emb.cos() * scaling).to(device)
        self.sin = (emb.sin() * scaling).to(device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention over the paged cache, with q/k/v fused into one projection."""

    def __init__(
        self,
        config,
        layer: int,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.sliding_window = sliding_window
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.rotary: Rotary | None = None  # shared, set by the model

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, ctx: StepContext, cache: KVCache
    ) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(n, self.heads, self.head_dim)
        k = k.view(n, self.kv_heads, self.head_dim)
        v = v.view(n, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        cache.k.view(self.kv_heads, -1, self.head_dim).index_copy_(1, ctx.slot_mapping, k.transpose(0, 1))
        cache.v.view(self.kv_heads, -1, self.head_dim).index_copy_(1, ctx.slot_mapping, v.transpose(0, 1))
        out = torch.empty_like(q)
        if ctx.num_decode:
            out[: ctx.num_decode] = self._decode(q[: ctx.num_decode], ctx, cache)
        for segment in ctx.prefills:
            span = slice(segment.start, segment.start + segment.length)
            out[span] = self._prefill(q[span], k[span], v[span], segment, cache)
        return self.o_proj(out.view(n, -1))

    def _decode(self, q: torch.Tensor, ctx: StepContext, cache: KVCache) -> torch.Tensor:
        # Head-major cache: gathering the blocks gives [kv_heads, batch, slots, head_dim], already laid out
        # for batched matmuls, so the only copy is the gather itself. Query heads of a group share a kv head.
        b = q.shape[0]
        group = self.heads // self.kv_heads
        keys = cache.k[:, ctx.decode_blocks].view(self.kv_heads, b, -1, self.head_dim)
        values = cache.v[:, ctx.decode_blocks].view(self.kv_heads, b, -1, self.head_dim)
        q = q.view(b, self.kv_heads, group, self.head_dim).transpose(0, 1)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scale
        scores = scores + ctx.decode_mask.view(1, b, 1, -1)
        if self.sliding_window is not None and keys.shape[2] > self.sliding_window:
            slots = torch.arange(keys.shape[2], device=q.device)
            old = slots[None, :] < (ctx.decode_lens[:, None] - self.sliding_window)
            scores = scores.masked_fill(old[None, :, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [kv_heads, batch, group, head_dim]
        return out.transpose(0, 1).reshape(b, self.heads, self.head_dim)

    def _prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment: PrefillSegment, cache: KVCache
    ) -> torch.Tensor:
        total = segment.cached + segment.length
        if segment.cached:  # the whole sequence so far, from the cache: [kv_heads, total, head_dim]
            k = cache.k[:, segment.block_table].view(self.kv_heads, -1, self.head_dim)[:, :total]
            v = cache.v[:, segment.block_table].view(self.kv_heads, -1, self.head_dim)[:, :total]
        else:
            k, v = k.transpose(0, 1), v.transpose(0, 1)
        mask = segment.mask
        if self.sliding_window is not None and total > self.sliding_window:
            query = torch.arange(segment.cached, total, device=q.device)[:, None]
            key = torch.arange(total, device=q.device)[None, :]
            mask = (key <= query) & (key > query - self.sliding_window)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.unsqueeze(0),
            v.unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None,
            scale=self.scale,
            enable_gqa=self.kv_heads != self.heads,
        )
        return out.squeeze(0).transpose(0, 1)


class GatedMLP(nn.Module):
    """SwiGLU feed-forward with gate and up projections fused."""

    def __init__(self, config, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config, layer: int, attention: Attention, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, positions, ctx: StepContext, cache: KVCache):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, ctx, cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


# checkpoint name -> (our fused parameter, which shard)
PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class Backbone(nn.Module):
    def __init__(self, config, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """A decoder-only language model in the engine's forward contract.

    Subclasses implement `make_layer`; everything else (embedding, layer loop,
    final norm, tied or separate head, weight loading) is shared.
    """

    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        super().__init__()
        self.config = config
        layers = [self.make_layer(config, i) for i in range(config.num_hidden_layers)]
        self.model = Backbone(config, layers)
        attention = layers[0].self_attn
        self.num_layers = len(layers)
        self.num_kv_heads = attention.kv_heads
        self.head_dim = attention.head_dim
        rotary = Rotary(config, self.head_dim, max_positions, device)
        for layer in layers:
            layer.self_attn.rotary = rotary
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def make_layer(self, config, index: int) -> DecoderLayer:
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, caches: list[KVCache]
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        residual = None
        for layer, cache in zip(self.model.layers, caches, strict=True):
            x, residual = layer(x, residual, positions, ctx, cache)
        x, _ = self.model.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(hidden, weight).float()

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in, fusing q/k/v and gate/up; a missing weight is an error."""
        params = dict(self.named_parameters())
        loaded: dict[str, set[int]] = {}
        for name, tensor in weights:
            if "rotary_emb" in name or (self.tied and name == "lm_head.weight"):
                continue
            target, shard = name, 0
            for part, (fused, index) in PACKED.items():
                if f".{part}." in name:
                    target, shard = name.replace(f".{part}.", f".{fused}."), index
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint has {name!r}, which this architecture does not use")
            _copy(self._shard(target, param, shard), tensor, name)
            loaded.setdefault(target, set()).add(shard)
        missing = [n for n in params if len(loaded.get(n, ())) < self._shards(n)]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")

    @staticmethod
    def _shards(name: str) -> int:
        return 3 if "qkv_proj" in name else 2 if "gate_up_proj" in name else 1

    def _shard(self, target: str, param: torch.Tensor, index: int) -> torch.Tensor:
        if "qkv_proj" in target:
            sizes = self.model.layers[0].self_attn.split
        elif "gate_up_proj" in target:
            sizes = (param.shape[0] // 2, param.shape[0] // 2)
        else:
            return param
        return param.narrow(0, sum(sizes[:index]), sizes[index])


def _copy(dest: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dest.shape != src.shape:
        raise ValueError(f"weight {name!r} has shape {tuple(src.shape)}, expected {tuple(dest.shape)}")
    dest.copy_(src.to(dest.dtype))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_bytes_per_token(model: CausalLM, dtype: torch.dtype) -> int:
    """Bytes one token takes in the cache: keys and values, every layer."""
    return (
        2
        * model.num_layers
        * model.num_kv_heads
        * model.head_dim
        * torch.empty((), dtype=dtype).element_size()
    )
