"""A decoder-only language model in the engine's forward contract, and how checkpoint weights reach it.

Subclasses implement `make_layer` and set a few class attributes for what differs
(Gemma's embedding scale and norm offset, renamed checkpoint tensors); the embedding,
layer loop, rotary tables, final norm, head and weight loading are shared.

Weights arrive as ``(name, tensor)`` pairs in checkpoint naming and are copied into
place one at a time, converting dtype on the way, so a load never holds a second copy
of the model. Separate q/k/v and gate/up matrices land in their slice of our fused
projections; per-expert matrices land in their slot of the stacked expert weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from helexa_torch.models.context import KVCache, StepContext
from helexa_torch.models.layers import RMSNorm
from helexa_torch.models.moe import Experts
from helexa_torch.models.packed import PACKABLE, PackedLinear, can_pack, pack_linears, packable
from helexa_torch.models.rotary import Rotary
from helexa_torch.weights import fill, release_freed_memory

# checkpoint name part -> (our fused parameter, which part of it)
PACKED = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"),
    "up_proj": ("gate_up_proj", "up"),
}
EXPERT = re.compile(r"\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
Key = str | tuple[int, str | None] | None
"""Which part of a parameter a checkpoint tensor fills: all of it (None), a fused part, or (expert, part)."""


class Backbone(nn.Module):
    def __init__(self, config, layers: list[nn.Module], norm_offset: float) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, norm_offset)


class CausalLM(nn.Module):
    renames: tuple[tuple[str, str], ...] = ()
    """Substring replacements from checkpoint names to ours, applied first (e.g. Mixtral's ``w1``)."""
    norm_offset = 0.0
    """1.0 for Gemma's ``(1 + weight)`` norms."""
    scale_embeddings = False
    """Gemma multiplies embeddings by sqrt(hidden_size)."""
    computes_logits = True
    """False on a tensor-parallel worker (see `drop_head`)."""
    copy_tied_head = True
    """Whether a CPU gets a packed copy of a tied head (not for a quantized model: see `packed`)."""

    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        super().__init__()
        self.config = config
        layers = [self.make_layer(config, i) for i in range(config.num_hidden_layers)]
        self.model = Backbone(config, layers, self.norm_offset)
        attention = layers[0].self_attn
        self.num_layers = len(layers)
        self.num_kv_heads = attention.kv_heads
        self.head_dim = attention.head_dim
        self.vocab_size = config.vocab_size
        tables: dict[str | None, Rotary] = {}
        for index, layer in enumerate(layers):
            kind = self.rope_layer_type(config, index)
            if kind not in tables:
                tables[kind] = Rotary(config, layer.self_attn.head_dim, max_positions, device, kind)
            layer.self_attn.rotary = tables[kind]
        self.make_head(config)
        self.final_softcap = getattr(config, "final_logit_softcapping", None)
        self.embed_scale = config.hidden_size**0.5 if self.scale_embeddings else None

    def make_layer(self, config, index: int) -> nn.Module:
        raise NotImplementedError

    def make_head(self, config) -> None:
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.packed_head: PackedLinear | None = None
        """On a CPU, a tied head's copy laid out for oneDNN (see `pack_linears`)."""

    def pack_linears(self) -> int:
        """Lay the decoder's linear layers and the head out for oneDNN (see `packed`); the count."""
        count = pack_linears(self.model.layers)
        embedding = self.model.embed_tokens.weight
        if self._copies_tied_head() and self.packed_head is None and embedding.dtype in PACKABLE:
            self.packed_head, count = PackedLinear(embedding), count + 1
        elif not self.tied and self.computes_logits and packable(self.lm_head):
            self.lm_head, count = PackedLinear.of(self.lm_head), count + 1
        return count

    def _packs(self, name: str, module: nn.Module) -> bool:
        """Whether `pack_linears` would pack this module (found by its name in the model)."""
        return packable(module) and (name.startswith("model.layers.") or name == "lm_head")

    def packed_head_bytes(self, device: torch.device, dtype: torch.dtype) -> int:
        """What `pack_linears` adds on ``device``: a tied head's packed copy (see `packed`)."""
        if self._copies_tied_head() and can_pack(device, dtype):
            return self.model.embed_tokens.weight.numel() * dtype.itemsize
        return 0

    def _copies_tied_head(self) -> bool:
        return self.tied and self.computes_logits and self.copy_tied_head

    def drop_head(self) -> None:
        """A tensor-parallel worker: logits are computed on rank 0 only."""
        self.computes_logits = False
        if not self.tied:
            del self.lm_head

    def materialize(self, device: torch.device) -> CausalLM:
        """Give the model (built on the meta device) real, uninitialised storage for its weights."""
        return self.to_empty(device=device)

    @staticmethod
    def layer_type(config, index: int) -> str | None:
        """``sliding_attention``/``full_attention`` (or another kind) where the config lists layer types."""
        kinds = getattr(config, "layer_types", None)
        return kinds[index] if kinds else None

    def rope_layer_type(self, config, index: int) -> str | None:
        """The key of this layer's rotary parameters when the config has one set per layer type."""
        kind = self.layer_type(config, index)
        return kind if kind in (getattr(config, "rope_parameters", None) or {}) else None

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, caches: list[KVCache]
    ) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        residual = None
        for layer, cache in zip(self.model.layers, caches, strict=True):
            x, residual = layer(x, residual, positions, ctx, cache)
        x, _ = self.model.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed_head is not None:
            logits = self.packed_head(hidden)
        elif self.tied:
            logits = F.linear(hidden, self.model.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden)
        logits = logits.float()
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    # --- weights ---------------------------------------------------------------------

    def route(self, name: str) -> tuple[str, Key]:
        """Our parameter for a checkpoint tensor, and which part of it the tensor fills."""
        for old, new in self.renames:
            name = name.replace(old, new)
        match = EXPERT.search(name)
        if match:
            expert, kind = int(match[1]), match[2]
            if kind == "down_proj":
                return f"{name[: match.start()]}.experts.down_proj", (expert, None)
            return f"{name[: match.start()]}.experts.gate_up_proj", (expert, kind.removesuffix("_proj"))
        for part, (fused, key) in PACKED.items():
            if f".{part}." in name:
                return name.replace(f".{part}.", f".{fused}."), key
        return name, None

    def skip(self, name: str) -> bool:
        return "rotary_emb" in name or (self.tied and name == "lm_head.weight")

    def prepare_weights(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors as this class routes them; an architecture whose checkpoints
        store a layout of their own rewrites it here, so every loader (plain, quantized, a shard's)
        sees the same names."""
        return weights

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], pack: bool = False) -> None:
        """Copy checkpoint tensors in one at a time; a missing or unknown weight is an error.

        With ``pack`` (a CPU), each decoder linear layer and an untied head is laid out for
        oneDNN as soon as its weight is whole (see `packed`): while the rest is still to come,
        so the copy this takes never sits on top of the whole model.
        """
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        loaded: dict[str, set] = {}

        def complete(name: str) -> bool:
            keys = loaded.get(name, set())
            return None in keys or len(keys) >= _parts(modules[name.rpartition(".")[0]], name)

        for name, tensor in self.prepare_weights(weights):
            if self.skip(name):
                continue
            target, key = self.route(name)
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint has {name!r}, which this architecture does not use")
            owner = target.rpartition(".")[0]
            module = modules[owner]
            if key is None:
                fill(param, tensor, name)
            else:
                _copy(_part(module, param, key), tensor, name)
            loaded.setdefault(target, set()).add(key)
            if pack and target.endswith(".weight") and self._packs(owner, module) and complete(target):
                parent, _, leaf = owner.rpartition(".")
                modules[owner] = PackedLinear.of(module)
                setattr(self.get_submodule(parent), leaf, modules[owner])
                del params[target], module, param, tensor  # the original's last references
                release_freed_memory()

        missing = [name for name in params if not complete(name)]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")


def _part(module: nn.Module, param: torch.Tensor, key: Key) -> torch.Tensor:
    if key is None:
        return param
    expert, part = key if isinstance(key, tuple) else (None, key)
    view = param if expert is None else param[expert]
    if part is not None:
        offset, size = module.parts[part]
        view = view.narrow(0, offset, size)
    return view


def _parts(module: nn.Module, name: str) -> int:
    """How many checkpoint tensors fill this parameter when they come one part at a time."""
    parts = len(getattr(module, "parts", {})) or 1
    if isinstance(module, Experts):
        return module.num_experts * (parts if name.endswith("gate_up_proj") else 1)
    return parts


def _copy(dest: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dest.shape != src.shape:
        raise ValueError(f"weight {name!r} has shape {tuple(src.shape)}, expected {tuple(dest.shape)}")
    dest.copy_(src)


def kv_bytes_per_token(model: CausalLM, dtype: torch.dtype) -> int:
    """Bytes one token takes in the cache: keys and values, every layer."""
    return (
        2
        * model.num_layers
        * model.num_kv_heads
        * model.head_dim
        * torch.empty((), dtype=dtype).element_size()
    )
