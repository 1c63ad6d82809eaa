"""bitsandbytes quantization of a model's linear layers, applied while the weights stream in.

``quant = "bnb-int8"`` is LLM.int8 (int8 weights with a per-row scale, outlier activation
columns above 6.0 computed in full precision); ``quant = "bnb-nf4"`` is 4-bit NormalFloat with
double quantization (the per-block scales are quantized too) and the model's ``dtype`` as
the compute dtype. Both quantize the linear layers of the decoder layers (attention
projections, MLPs, shared-expert gates); embeddings, norms, MoE routers, stacked MoE experts and
the LM head stay in the compute dtype, as transformers' ``BitsAndBytesConfig`` leaves them (a
router is tiny, and rounding it changes which experts a token goes to).

The full-precision model never exists: a linear layer is a `Deferred` placeholder (shape, bias,
no weight) until every checkpoint tensor that fills its weight has arrived (q, k and v for a
fused projection); that one weight is then quantized and the placeholder replaced by the
bitsandbytes module. A load therefore holds the quantized model plus one layer's weights.

A GGUF file is dequantized tensor by tensor on load (see `weights`), so bnb applies to it too:
that is how a GGUF model keeps int8/4-bit memory here rather than its dequantized size, at the
price of a second rounding on top of the file's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from helexa.errors import ApiError
from helexa_torch.models.packed import PackedLinear

SCHEMES = ("bnb-int8", "bnb-nf4")
INT8_THRESHOLD = 6.0  # LLM.int8's outlier threshold, transformers' default too
NF4_BLOCK = 64


@dataclass(frozen=True)
class Quantization:
    scheme: str
    compute_dtype: torch.dtype

    def module(self, deferred: Deferred, weight: torch.Tensor, device: torch.device) -> nn.Module:
        """The bitsandbytes layer for a complete full-precision ``weight``, quantized on ``device``."""
        import bitsandbytes as bnb

        has_bias = deferred.bias is not None
        if self.scheme == "bnb-int8":
            layer = bnb.nn.Linear8bitLt(
                deferred.in_features,
                deferred.out_features,
                bias=has_bias,
                has_fp16_weights=False,
                threshold=INT8_THRESHOLD,
                device="meta",
            )
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
        else:
            layer = bnb.nn.Linear4bit(
                deferred.in_features,
                deferred.out_features,
                bias=has_bias,
                compute_dtype=self.compute_dtype,
                quant_type="nf4",
                compress_statistics=True,
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                weight.to(self.compute_dtype),
                requires_grad=False,
                quant_type="nf4",
                compress_statistics=True,
                blocksize=NF4_BLOCK,
                module=layer,
            ).to(device)
        if has_bias:
            layer.bias = nn.Parameter(deferred.bias.detach(), requires_grad=False)
        return layer

    def weight_bytes(self, out_features: int, in_features: int) -> int:
        """What one quantized weight takes: packed values plus their scales."""
        count = out_features * in_features
        if self.scheme == "bnb-int8":
            return count + 4 * out_features  # int8 values, a float32 scale per row
        blocks = -(-count // NF4_BLOCK)
        # 4-bit values, a uint8 scale per block, a float32 per 256 scales (double quantization)
        return count // 2 + blocks + 4 * -(-blocks // 256)


def parse(value: str | None, dtype: torch.dtype) -> Quantization | None:
    """The bitsandbytes scheme named by ``quant``, None for no quant or a GGUF file's quant name."""
    if value is None or not value.lower().startswith("bnb"):
        return None
    if value.lower() not in SCHEMES:
        raise unknown(value)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ApiError(
            422,
            f"quant {value!r} needs bitsandbytes, which is not installed on this neuron "
            "(pip install 'helexa-torch[bitsandbytes]')",
            code="quant_unavailable",
            param="quant",
        ) from None
    return Quantization(value.lower(), dtype)


def unknown(value: str) -> ApiError:
    return ApiError(
        400,
        f"quant {value!r} is not known: valid values are {', '.join(SCHEMES)}, or the quant of one of "
        "the GGUF files in a model folder (e.g. Q4_K_M)",
        code="unknown_quant",
        param="quant",
    )


class Deferred(nn.Module):
    """A linear layer waiting for its weight: its shape, its bias and its fused parts, no weight storage."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.parts = getattr(linear, "parts", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a quantized layer's weights were never loaded")


def defer_linears(model: nn.Module) -> int:
    """Replace every linear layer inside the decoder layers with a `Deferred` placeholder."""
    layers = model.model.layers
    swapped = 0
    for name, module in list(layers.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            owner = layers.get_submodule(parent) if parent else layers
            if attr == "gate" and hasattr(owner, "experts"):
                continue  # an MoE router
            setattr(owner, attr, Deferred(module))
            swapped += 1
    return swapped


def quantized_bytes(model: nn.Module, quant: Quantization) -> int:
    """The weights' size once quantized, computed from the (meta) model's shapes before any load."""
    total = 0
    for module in model.modules():
        if isinstance(module, Deferred):
            total += quant.weight_bytes(module.out_features, module.in_features)
    for param in model.parameters():  # the deferred layers' biases included: they stay as they are
        total += param.numel() * param.element_size()
    return total


def resident_bytes(model: nn.Module) -> int:
    """Bytes the model's weights really take: every parameter, plus bitsandbytes' scales and states."""
    seen: set[int] = set()
    total = 0

    def add(tensor: torch.Tensor | None) -> None:
        nonlocal total
        if tensor is None or tensor.device.type == "meta":
            return
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()

    total += sum(m.nbytes for m in model.modules() if isinstance(m, PackedLinear))  # no storage to share
    for param in model.parameters():
        add(param)
        add(getattr(param, "SCB", None))
        state = getattr(param, "quant_state", None)
        while state is not None:
            add(state.absmax)
            add(state.code)
            add(getattr(state, "offset", None))
            state = state.state2
    return total


@torch.no_grad()
def load_quantized(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], quant: Quantization, device: torch.device
) -> None:
    """`CausalLM.load_weights`, but deferred linear weights are assembled and quantized one at a time."""
    from helexa_torch.models.causal_lm import _copy, _part, _parts

    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    staged: dict[str, torch.Tensor] = {}
    filled: dict[str, set] = {}
    for name, tensor in model.prepare_weights(weights):
        if model.skip(name):
            continue
        target, key = model.route(name)
        owner, _, attr = target.rpartition(".")
        module = modules.get(owner)
        if not isinstance(module, Deferred) or attr != "weight":
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint has {name!r}, which this architecture does not use")
            _copy(_part(module, param, key), tensor, name)
            filled.setdefault(target, set()).add(key)
            continue
        weight = staged.get(owner)
        if weight is None:
            weight = staged[owner] = torch.empty(
                module.out_features, module.in_features, dtype=quant.compute_dtype
            )
        _copy(_part(module, weight, key), tensor, name)
        keys = filled.setdefault(owner, set())
        keys.add(key)
        if None in keys or len(keys) >= max(1, len(module.parts)):
            parent, _, leaf = owner.rpartition(".")
            setattr(model.get_submodule(parent), leaf, quant.module(module, staged.pop(owner), device))

    def complete(name: str) -> bool:
        keys = filled.get(name, set())
        return None in keys or len(keys) >= _parts(modules[name.rpartition(".")[0]], name)

    missing = [n for n, m in model.named_modules() if isinstance(m, Deferred)]
    missing += [n for n, p in model.named_parameters() if n in params and not complete(n)]
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:3]}")
