"""Any causal LM that transformers can build, served on helexa's paged cache and continuous batching.

transformers lets a model's attention be swapped by name (`AttentionInterface`). helexa
registers ``"helexa"``: the model's own modules compute their projections, norms and rotary
embeddings, and hand queries, keys and values to `attention`'s paged functions, which store
and read the cache exactly as the native architectures do. The whole engine step goes
through the model as one sequence ``[1, tokens]`` with each token's own position; the
`StepContext` travels in the forward's keyword arguments down to every attention call.

What it cannot carry: models whose attention does not go through the interface
(``_supports_attention_backend`` false), encoder-decoders, and layers that keep state other
than keys and values (linear attention, Mamba); those get a 422 that says why.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from helexa_torch.models.attention import AttentionSpec, decode_attention, prefill_attention, store_kv
from helexa_torch.models.context import KVCache, StepContext
from helexa_torch.weights import fill

ATTENTION = "helexa"
STATEFUL_LAYERS = ("linear_attention", "mamba", "conv", "recurrent")
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, paged_attention)
    # Visibility is decided by the paged functions from the step context, so no mask is built.
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)
    _registered = True


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention contract: ``[1, heads, tokens, dim]`` in, ``[1, tokens, heads, dim]`` out."""
    ctx, caches = kwargs["helexa_step"]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    spec = AttentionSpec(
        heads=q.shape[1],
        kv_heads=k.shape[1],
        head_dim=q.shape[2],
        scale=scaling if scaling is not None else q.shape[2] ** -0.5,
        sliding_window=kwargs.get("sliding_window") or getattr(module, "sliding_window", None) or None,
        softcap=kwargs.get("softcap") or None,
    )
    cache = caches[module.layer_idx]
    store_kv(cache, k.to(cache.k.dtype), v.to(cache.v.dtype), ctx.slot_mapping)
    out = torch.empty_like(q)
    if ctx.num_decode:
        out[: ctx.num_decode] = decode_attention(q[: ctx.num_decode], ctx, cache, spec)
    for segment in ctx.prefills:
        span = slice(segment.start, segment.start + segment.length)
        out[span] = prefill_attention(q[span], k[span], v[span], segment, cache, spec)
    return out.unsqueeze(0), None


class TransformersForCausalLM(nn.Module):
    def __init__(self, config, device: torch.device, max_positions: int) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        _register()
        self.config = config
        self.hf = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION)
        heads = config.num_attention_heads
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.vocab_size = config.vocab_size
        self.architecture_name = (getattr(config, "architectures", None) or [type(self.hf).__name__])[0]

    @classmethod
    def unsupported(cls, config) -> str | None:
        """Why this fallback cannot serve a config, or None when it can."""
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        model_type = getattr(config, "model_type", "")
        built = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        wanted = (getattr(config, "architectures", None) or [built])[0]
        if built is None:
            return f"transformers has no causal LM for model type {model_type!r}"
        if wanted != built:
            return f"model type {model_type!r} builds {built}, not {wanted}"
        if getattr(config, "is_encoder_decoder", False):
            return "encoder-decoder models are not served"
        stateful = set(getattr(config, "layer_types", None) or []) & set(STATEFUL_LAYERS)
        if stateful:
            return f"its {', '.join(sorted(stateful))} layers keep state the paged cache has no room for"
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
        if not getattr(model_class, "_supports_attention_backend", False):
            return f"{built}'s attention does not go through transformers' attention interface"
        return None

    def materialize(self, device: torch.device) -> TransformersForCausalLM:
        """Rebuild the model on ``device`` without initialising weights: non-persistent buffers
        (rotary frequencies) are computed as the model builds them, and nothing is allocated twice."""
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        dtype = next(self.hf.parameters()).dtype
        with no_init_weights(), torch.device(device):
            self.hf = AutoModelForCausalLM.from_config(
                self.config, attn_implementation=ATTENTION, dtype=dtype
            )
        return self

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, caches: list[KVCache]
    ) -> torch.Tensor:
        out = self.hf.base_model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            helexa_step=(ctx, caches),
        )
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        config = self.config
        logits = self.hf.get_output_embeddings()(hidden).float()
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        if getattr(config, "final_logit_softcapping", None):
            cap = config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], pack: bool = False) -> None:
        """As `CausalLM.load_weights`; ``pack`` has no effect: transformers' own modules may read
        their weights directly, so they keep them as they are (see `packed`)."""
        params = dict(self.hf.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            param = params.get(name)
            if param is None:
                if "rotary_emb" in name or name == "lm_head.weight":
                    continue  # buffers the model computes; a head tied to the embedding
                raise ValueError(f"checkpoint has {name!r}, which {self.architecture_name} does not use")
            fill(param, tensor, name)
            loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")
