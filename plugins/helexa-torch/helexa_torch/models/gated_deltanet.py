"""Gated DeltaNet linear attention (Qwen3.5, Qwen3.6, Qwen3-Next), in the engine's batch layout.

Instead of a growing KV cache, each sequence carries two small states per layer: the last
``kernel - 1`` inputs of a causal depthwise convolution, and a recurrent matrix per value head
(``[k_head_dim, v_head_dim]``) updated by the gated delta rule. A step reads each sequence's
states from its slot of the `StateCache`, and stages the new ones (see `StateStep`): they are
written back only when the engine commits the step, so a step that fails and is retried in
halves starts again from the same states.

Decoding sequences take one recurrent update each, batched. Prompt chunks use the chunked
form of the delta rule (a few matmuls per 64 tokens), one segment at a time; a segment is
split where a prefix snapshot is wanted, so the state at that block boundary exists exactly.

The pure-PyTorch functions here follow transformers' reference implementation step for step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from helexa_torch.models.context import StepContext
from helexa_torch.models.layers import activation

CHUNK = 64


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta):
    """[heads, ...] float32 operands with grouped q/k heads expanded, q/k normalised and q scaled."""
    groups = v.shape[-2] // q.shape[-2]
    if groups > 1:
        q, k = q.repeat_interleave(groups, dim=-2), k.repeat_interleave(groups, dim=-2)
    q, k = l2norm(q.float()), l2norm(k.float())
    return q * q.shape[-1] ** -0.5, k, v.float(), g.float(), beta.float()


def chunked_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence: ``q/k [L, hk, dk]``, ``v [L, hv, dv]``, ``g/beta [L, hv]``, ``state [hv, dk, dv]``.

    Returns the outputs ``[L, hv, dv]`` (float32) and the state after the last token. A prompt
    shorter than ``chunk`` is one chunk of the next power of two: padding a 16-token prompt to 64
    would do sixteen times the work in the chunk's square matrices.
    """
    length = q.shape[0]
    chunk = min(chunk, _power_of_two(length))
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))  # [heads, L, dim]
    g, beta = g.t(), beta.t()
    pad = (chunk - length % chunk) % chunk
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    heads = q.shape[0]
    v_beta, k_beta = v * beta.unsqueeze(-1), k * beta.unsqueeze(-1)
    q, k, k_beta, v_beta = (x.reshape(heads, -1, chunk, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    g = g.reshape(heads, -1, chunk).cumsum(dim=-1)
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = (g.unsqueeze(-1) - g.unsqueeze(-2)).masked_fill(upper, float("-inf")).exp()
    system = (k_beta @ k.transpose(-1, -2)) * decay
    intra = (q @ k.transpose(-1, -2)) * decay
    # The UT transform folds a chunk's delta-rule updates into two triangular solves.
    values = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    k_decayed = torch.linalg.solve_triangular(
        system, k_beta * g.exp().unsqueeze(-1), upper=False, unitriangular=True
    )
    state = state.float()
    out = torch.zeros_like(values)
    q = q * g.exp().unsqueeze(-1)
    k = k * (g[..., -1:] - g).exp().unsqueeze(-1)
    chunk_decay = g[..., -1].exp()[..., None, None]
    for i in range(values.shape[1]):
        v_new = values[:, i] - k_decayed[:, i] @ state
        out[:, i] = q[:, i] @ state + intra[:, i] @ v_new
        state = state * chunk_decay[:, i] + k[:, i].transpose(-1, -2) @ v_new
    out = out.reshape(heads, -1, out.shape[-1])[:, :length]
    return out.transpose(0, 1), state


def chunked_delta_rule_batch(
    pieces: list[tuple[torch.Tensor, ...]], rule=chunked_delta_rule
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`chunked_delta_rule` for several sequences' ``(q, k, v, g, beta, state)`` at once.

    Each is padded at its end to the longest (zero keys, values and decay leave a state as it
    was) and they are stacked along the head dimension, so a step that prefills many short
    prompts runs the rule once instead of once per prompt. Give it pieces of similar lengths:
    the padding is computed too.
    """
    if len(pieces) == 1:
        return [rule(*pieces[0])]
    longest = max(piece[0].shape[0] for piece in pieces)

    def stacked(i: int) -> torch.Tensor:
        parts = [piece[i] for piece in pieces]
        pad = (0, 0) * (parts[0].dim() - 1)
        return torch.cat([F.pad(x, (*pad, 0, longest - x.shape[0])) for x in parts], dim=1)

    q, k, v, g, beta = (stacked(i) for i in range(5))
    out, state = rule(q, k, v, g, beta, torch.cat([piece[5] for piece in pieces]))
    heads = pieces[0][2].shape[1]
    return [
        (out[: piece[0].shape[0], i * heads : (i + 1) * heads], state[i * heads : (i + 1) * heads])
        for i, piece in enumerate(pieces)
    ]


def padded_length(length: int) -> int:
    """The length `chunked_delta_rule` computes for a prompt piece (pieces alike batch together)."""
    return _power_of_two(length) if length <= CHUNK else -(-length // CHUNK) * CHUNK


def _power_of_two(length: int) -> int:
    """The smallest power of two >= ``length``."""
    return 1 << max(length - 1, 0).bit_length()


def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token for each of a batch of sequences: ``q/k [B, hk, dk]``, ``state [B, hv, dk, dv]``.

    ``state`` (float32, contiguous) is updated in place and returned: pass a copy (a gather
    from the state cache is one). Written as batched matmuls over (sequence, head) that read
    the states once for both products they need (``k`` and ``q`` against the old state, since
    ``q . S_new = decay * q . S + (q . k) * delta``) and update them in place: on a 2-core CPU at
    16 sequences this is 3x faster than the elementwise form, which made five temporaries of the
    states' size.
    """
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    batch, heads, k_dim, v_dim = state.shape
    rows = batch * heads
    flat = state.view(rows, k_dim, v_dim)
    decay = g.exp().view(rows, 1)
    k, q = k.reshape(rows, k_dim), q.reshape(rows, k_dim)
    read = torch.bmm(torch.stack((k, q), dim=1), flat)  # [rows, 2, v_dim]: k.S and q.S
    delta = (v.reshape(rows, v_dim) - read[:, 0] * decay) * beta.reshape(rows, 1)
    out = read[:, 1] * decay + (q * k).sum(-1, keepdim=True) * delta
    flat.mul_(decay.view(rows, 1, 1)).baddbmm_(k.unsqueeze(-1), delta.unsqueeze(1))
    return out.view(batch, heads, v_dim), state


def conv_step(
    state: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, act
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the causal depthwise convolution for each of a batch of sequences:
    ``state [B, channels, K-1]`` (the last inputs), ``x [B, channels]``, ``weight [channels, K]``.
    Returns the activated output and the new state."""
    window = torch.cat((state, x[..., None].to(state.dtype)), dim=-1)
    return act((window * weight).sum(-1)), window[..., 1:]


@dataclass(frozen=True)
class DeltaKernels:
    """What a Gated DeltaNet layer computes its three steps with (see `delta_kernels`)."""

    chunked: Callable = chunked_delta_rule
    recurrent: Callable = recurrent_delta_rule
    conv: Callable = conv_step
    names: tuple[str, ...] = ()
    """The device kernels taken instead of the PyTorch reference."""


REFERENCE = DeltaKernels()


class GatedRMSNorm(nn.Module):
    """RMS norm of each value head's output, then scaled by ``silu(gate)``."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = self.weight * h.to(dtype)
        return (h * F.silu(gate.float())).to(dtype)


class GatedDeltaNet(nn.Module):
    """The linear-attention token mixer. Projections are fused into one ``in_proj`` (q|k|v, z, b, a)."""

    kernels = REFERENCE
    """Replaced per model where a device kernel proved equal (see `delta_kernels.choose`)."""

    def __init__(self, config, state_index: int) -> None:
        super().__init__()
        self.state_index = state_index
        """Which of the model's linear-attention layers this is (its row in the state cache)."""
        self.k_heads = config.linear_num_key_heads
        self.v_heads = config.linear_num_value_heads
        self.k_dim = config.linear_key_head_dim
        self.v_dim = config.linear_value_head_dim
        self.kernel = config.linear_conv_kernel_dim
        key_size, self.value_size = self.k_heads * self.k_dim, self.v_heads * self.v_dim
        self.conv_dim = 2 * key_size + self.value_size
        self.split = (key_size, key_size, self.value_size)
        sizes = {"qkv": self.conv_dim, "z": self.value_size, "b": self.v_heads, "a": self.v_heads}
        self.in_proj = nn.Linear(config.hidden_size, sum(sizes.values()), bias=False)
        offsets, offset = {}, 0
        for part, size in sizes.items():
            offsets[part] = (offset, size)
            offset += size
        self.in_proj.parts = offsets
        self.sizes = tuple(sizes.values())
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            self.kernel,
            groups=self.conv_dim,
            padding=self.kernel - 1,
            bias=False,
        )
        self.dt_bias = nn.Parameter(torch.ones(self.v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.v_heads))
        self.norm = GatedRMSNorm(self.v_dim, config.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_size, config.hidden_size, bias=False)
        self.act = activation(config)

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per sequence: the convolution state and the recurrent state."""
        return (self.conv_dim, self.kernel - 1), (self.v_heads, self.k_dim, self.v_dim)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        states = ctx.states
        conv_cache, _ = states.layer(self.state_index)
        n = x.shape[0]
        qkv, z, b, a = self.in_proj(x).split(self.sizes, dim=-1)
        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        weight = self.conv1d.weight.squeeze(1)  # [channels, kernel]
        core = x.new_empty(n, self.v_heads, self.v_dim)
        d = ctx.num_decode
        if d:
            slots = states.decode_slots
            mixed, conv = self.kernels.conv(conv_cache.index_select(0, slots), qkv[:d], weight, self.act)
            q, k, v = self._heads(mixed.to(x.dtype))
            rec = states.gather_recurrent(self.state_index, slots)
            out, rec = self.kernels.recurrent(q, k, v, g[:d], beta[:d], rec)
            core[:d] = out.to(x.dtype)
            states.stage(self.state_index, slots, conv, rec)
        if ctx.prefills:
            self._prefill(ctx, qkv, g, beta, weight, core)
        out = self.norm(core, z.view(n, self.v_heads, self.v_dim)).view(n, -1)
        return self.out_proj(out)

    def _heads(self, mixed: torch.Tensor):
        q, k, v = mixed.split(self.split, dim=-1)
        shape = mixed.shape[:-1]
        return (
            q.view(*shape, self.k_heads, self.k_dim),
            k.view(*shape, self.k_heads, self.k_dim),
            v.view(*shape, self.v_heads, self.v_dim),
        )

    def _prefill(self, ctx: StepContext, qkv, g, beta, weight, core: torch.Tensor) -> None:
        """The step's prompt chunks into ``core``: the convolution per chunk, then the delta rule
        for all of them together, split where a snapshot is wanted so the recurrent state at
        each such block boundary comes out exactly."""
        states = ctx.states
        conv_cache, rec_cache = states.layer(self.state_index)
        prompts = []
        for index, segment in enumerate(ctx.prefills):
            span = slice(segment.start, segment.start + segment.length)
            slot = states.prefill_slots[index]
            window = torch.cat((conv_cache[slot], qkv[span].t().to(conv_cache.dtype)), dim=-1)
            conv = F.conv1d(window[None], weight[:, None, :], groups=self.conv_dim)[0]
            q, k, v = self._heads(self.act(conv).t().to(core.dtype))
            stops = [*((offset, True) for offset in states.snapshot_offsets[index]), (len(q), False)]
            inputs = (q, k, v, g[span], beta[span])
            prompts.append(_Prompt(index, span, window, inputs, rec_cache[slot], stops))
        pending = prompts
        while pending:  # each round takes every prompt to its next stop
            rounds = [(prompt, *prompt.stops.pop(0)) for prompt in pending]
            alike: dict[int, list[tuple[_Prompt, int]]] = {}
            for prompt, offset, _ in rounds:
                if offset > prompt.begin:
                    alike.setdefault(padded_length(offset - prompt.begin), []).append((prompt, offset))
            for group in alike.values():
                pieces = [(*(x[p.begin : end] for x in p.inputs), p.state) for p, end in group]
                done = chunked_delta_rule_batch(pieces, self.kernels.chunked)
                for (prompt, _), (out, state) in zip(group, done, strict=True):
                    prompt.outputs.append(out)
                    prompt.state = state
            for prompt, offset, snapshot in rounds:
                prompt.begin = offset
                if snapshot:
                    conv_state = prompt.window[:, offset : offset + self.kernel - 1]
                    states.capture(self.state_index, prompt.index, offset, conv_state, prompt.state)
            pending = [prompt for prompt in pending if prompt.stops]
        for prompt in prompts:
            core[prompt.span] = torch.cat(prompt.outputs).to(core.dtype)
            tail = prompt.window[:, prompt.window.shape[1] - (self.kernel - 1) :]
            slot = states.prefill_slot_tensors[prompt.index]
            states.stage(self.state_index, slot, tail[None], prompt.state[None])


@dataclass(eq=False)
class _Prompt:
    """One prompt chunk on its way through `GatedDeltaNet._prefill`."""

    index: int
    span: slice
    window: torch.Tensor
    """The convolution's input: the cached last inputs, then the chunk's (``[channels, K-1+L]``)."""
    inputs: tuple[torch.Tensor, ...]
    """q, k, v, g, beta of the whole chunk."""
    state: torch.Tensor
    """The recurrent state where the chunk's computation has reached (``begin``)."""
    stops: list[tuple[int, bool]]
    """Offsets still to reach, and whether to snapshot there."""
    begin: int = 0
    outputs: list[torch.Tensor] = field(default_factory=list)
