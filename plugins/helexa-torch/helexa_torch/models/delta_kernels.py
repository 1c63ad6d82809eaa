"""Device kernels for Gated DeltaNet, taken only where installed and proven equal to ours.

The pure-PyTorch functions of `gated_deltanet` are the reference on every device. On a GPU
where flash-linear-attention (``fla``) or ``causal-conv1d`` is installed, their kernels are
faster. When a hybrid model is served there, each kernel found is first run beside the
reference on random inputs of the model's own head shapes and dtype; it is used only if its
outputs and states agree. A kernel whose conventions differ from the ones the adapters below
assume (a renamed argument, another state layout) is logged and skipped, never served.

The adapters call the libraries as their public functions are documented:
``chunk_gated_delta_rule`` / ``fused_recurrent_gated_delta_rule(q, k, v, *, g, beta,
initial_state, output_final_state, use_qk_l2norm_in_kernel)`` with ``[batch, time, heads,
dim]`` operands, and ``causal_conv1d_update(x, conv_state, weight, bias, activation)``
updating ``conv_state`` in place. transformers' PyTorch fallbacks share those signatures,
which is how the adapters are tested on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F

from helexa_torch.models.gated_deltanet import (
    REFERENCE,
    DeltaKernels,
    chunked_delta_rule,
    conv_step,
    recurrent_delta_rule,
)

log = logging.getLogger("helexa.torch.engine")

TOLERANCE = 1e-2
"""Largest difference allowed, relative to the reference's largest value: a kernel computing in
TF32 or bfloat16 stays well inside it; a wrong convention (scale, head grouping, state layout)
is off by the order of the values themselves."""


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k with one head per value head (older kernel versions have no grouped heads)."""
    groups = v.shape[-2] // q.shape[-2]
    if groups > 1:
        q, k = q.repeat_interleave(groups, dim=-2), k.repeat_interleave(groups, dim=-2)
    return q, k


def fla_chunked(kernel: Callable, q, k, v, g, beta, state) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _grouped(q, k, v)
    out, final = kernel(
        q[None],
        k[None],
        v[None],
        g=g[None].float(),
        beta=beta[None],
        initial_state=state[None].float(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    return out[0].float(), final[0].float()


def fla_recurrent(kernel: Callable, q, k, v, g, beta, state) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _grouped(q, k, v)
    out, final = kernel(
        q[:, None],
        k[:, None],
        v[:, None],
        g=g[:, None].float(),
        beta=beta[:, None],
        initial_state=state,
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    state.copy_(final)  # the contract: the (staged) state is updated in place
    return out[:, 0].float(), state


def conv1d_update(kernel: Callable, state, x, weight, act) -> tuple[torch.Tensor, torch.Tensor]:
    if act is not F.silu:
        raise ValueError("causal-conv1d fuses silu only")
    out = kernel(x[..., None].to(state.dtype), state, weight, None, activation="silu")
    return out[..., 0], state  # ``state`` (a gathered copy) was shifted in place


def installed(device: torch.device) -> dict[str, tuple[str, Callable]]:
    """The kernels importable for ``device`` (a GPU): name -> (which step, adapter)."""
    found: dict[str, tuple[str, Callable]] = {}
    if device.type != "cuda":
        return found
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception:  # not installed, or built for another torch
        pass
    else:
        found["fla chunk_gated_delta_rule"] = ("chunked", partial(fla_chunked, chunk_gated_delta_rule))
        found["fla fused_recurrent_gated_delta_rule"] = (
            "recurrent",
            partial(fla_recurrent, fused_recurrent_gated_delta_rule),
        )
    try:
        from causal_conv1d import causal_conv1d_update
    except Exception:
        pass
    else:
        found["causal_conv1d_update"] = ("conv", partial(conv1d_update, causal_conv1d_update))
    return found


def choose(
    layer, device: torch.device, dtype: torch.dtype, found: dict[str, tuple[str, Callable]] | None = None
) -> DeltaKernels:
    """The reference, with each kernel of ``found`` (default: `installed`) that agrees with it."""
    if found is None:
        found = installed(device)
    kernels = REFERENCE
    for name, (step, kernel) in found.items():
        try:
            with torch.inference_mode():
                error = CHECKS[step](layer, kernel, device, dtype)
        except Exception as exc:  # a kernel that cannot even run these shapes is not ours to use
            log.warning("%s failed on this model's shapes (%s): using the PyTorch reference", name, exc)
            continue
        if error > TOLERANCE:
            log.warning(
                "%s differs from the PyTorch reference by %.2g (relative): using the reference", name, error
            )
            continue
        log.info("%s agrees with the PyTorch reference (%.1g relative): using it", name, error)
        kernels = replace(kernels, **{step: kernel}, names=(*kernels.names, name))
    return kernels


def _inputs(layer, rows: int, batched: bool, device, dtype):
    """Random q, k, v, g, beta and state in the layer's head shapes: ``rows`` tokens of one
    sequence, or one token of ``rows`` sequences (``batched``). Decays <= 0, betas in (0, 1)."""
    generator = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(shape, generator=generator) * scale).to(device)

    q = rand(rows, layer.k_heads, layer.k_dim).to(dtype)
    k = rand(rows, layer.k_heads, layer.k_dim).to(dtype)
    v = rand(rows, layer.v_heads, layer.v_dim).to(dtype)
    g = -F.softplus(rand(rows, layer.v_heads))
    beta = rand(rows, layer.v_heads).sigmoid().to(dtype)
    state = rand(*((rows,) if batched else ()), layer.v_heads, layer.k_dim, layer.v_dim, scale=0.1)
    return q, k, v, g, beta, state


def _relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float(
        (ours.float() - reference.float()).abs().max() / reference.float().abs().max().clamp_min(1e-6)
    )


def _check_rule(reference: Callable, rows: int, batched: bool) -> Callable[..., float]:
    """A check of a delta-rule kernel against ``reference`` on `_inputs` of that kind."""

    def check(layer, kernel, device, dtype) -> float:
        q, k, v, g, beta, state = _inputs(layer, rows, batched, device, dtype)
        out, final = reference(q, k, v, g, beta, state.clone())
        got, got_final = kernel(q, k, v, g, beta, state.clone())
        return max(_relative(got, out), _relative(got_final, final))

    return check


def _check_conv(layer, kernel, device, dtype) -> float:
    generator = torch.Generator(device="cpu").manual_seed(0)
    state = torch.randn(3, layer.conv_dim, layer.kernel - 1, generator=generator).to(device, dtype)
    x = torch.randn(3, layer.conv_dim, generator=generator).to(device, dtype)
    weight = layer.conv1d.weight.squeeze(1)
    out, new = conv_step(state.clone(), x, weight, layer.act)
    got, got_new = kernel(state.clone(), x, weight, layer.act)
    return max(_relative(got, out), _relative(got_new, new))


CHECKS = {
    "chunked": _check_rule(chunked_delta_rule, 100, batched=False),  # more than one 64-token chunk
    "recurrent": _check_rule(recurrent_delta_rule, 3, batched=True),
    "conv": _check_conv,
}


def take_device_kernels(model, device: torch.device, dtype: torch.dtype) -> DeltaKernels:
    """Give every linear-attention layer of ``model`` the kernels `choose` finds for it."""
    kernels = choose(model.linear_layers[0], device, dtype)
    for layer in model.linear_layers:
        layer.kernels = kernels
    return kernels
