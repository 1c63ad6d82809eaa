"""The harness contract: what a harness plugin implements so the neuron can serve its models.

A harness loads models and generates tokens; the neuron's serving layer does the
rest (OpenAI semantics, stop strings, reasoning and tool-call parsing, usage). The
echo harness (``plugins/helexa-echo``) is the worked example; docs/plugins.md walks
through it.

Cancellation: `Harness.generate` returns an async iterator. Closing it (``aclose``)
aborts the sequence and frees its memory; the serving layer closes it when the
client disconnects, when a stop string matches, or when it has what it needs.

Parking (optional, `Parking`): a harness that can keep an evicted model's weights in
host memory offers ``park_size``, ``park`` and ``wake``; the neuron then parks instead
of dropping when the gateway evicts, and a later load is a wake. A harness without
them simply unloads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec

from helexa.errors import ApiError
from helexa.wire.fleet import DeviceInfo, ModelSpec

LoadProgress = Callable[[str, float | None], None]
"""``progress(stage, fraction)``: what the load is doing and how far along (0..1, or None)."""


class InsufficientMemory(ApiError):
    """A load that does not fit in the free memory of the devices it was given."""

    def __init__(self, device: int, free_mb: int, required_mb: int) -> None:
        super().__init__(
            503,
            f"not enough memory on device {device}: {required_mb} MB needed, {free_mb} MB free",
            code="insufficient_memory",
            type="api_error",
            extras={"device": device, "free_mb": free_mb, "required_mb": required_mb},
        )


class MemoryLedger:
    """Memory reserved by loaded models, per device. Harnesses reserve before they allocate.

    For simulated devices this is the only accounting there is; for real ones it
    keeps two loads from both taking the same free memory.
    """

    def __init__(self, devices: list[DeviceInfo]) -> None:
        self.total = {d.index: d.vram_total_mb for d in devices}
        self.reserved: dict[str, dict[int, int]] = {}

    def used(self, device: int) -> int:
        return sum(per.get(device, 0) for per in self.reserved.values())

    def free(self, device: int) -> int:
        return max(0, self.total.get(device, 0) - self.used(device))

    def reserve(self, model_id: str, need: dict[int, int]) -> None:
        for device, mb in need.items():
            if device not in self.total:
                raise ApiError(
                    400, f"no device {device} on this neuron (devices: {sorted(self.total)})", param="devices"
                )
            if mb > self.free(device):
                raise InsufficientMemory(device, self.free(device), mb)
        current = self.reserved.setdefault(model_id, {})
        for device, mb in need.items():
            current[device] = current.get(device, 0) + mb

    def release(self, model_id: str) -> None:
        self.reserved.pop(model_id, None)


@dataclass
class HarnessContext:
    """What the neuron gives a harness factory."""

    name: str
    options: dict[str, Any]
    """``[harness.<name>]`` from neuron.toml."""
    devices: list[DeviceInfo]
    ledger: MemoryLedger
    model_roots: list[Path] = field(default_factory=list)
    hf_cache: Path | None = None
    allow_downloads: bool = False
    plugins: Any = None
    """The `helexa.plugins.PluginHost`, for harnesses that use other registries (architectures)."""
    model_failed: Callable[[str, str], None] | None = None
    """``model_failed(model_id, reason)``, called on the event loop when a loaded model can no longer
    serve (a tensor-parallel rank died): the neuron shows it ``failed``. The harness has already
    failed its streams and released what it held."""


class LoadedModel(msgspec.Struct, kw_only=True):
    """What a harness reports about a model once it is loaded."""

    model_id: str
    devices: list[int]
    memory_mb: dict[int, int]
    capabilities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    """``text``, ``vision``, ``tools``."""
    max_model_len: int = 4096
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    """Sampling defaults from the model's generation config (temperature, top_p, ...)."""
    think_markers: tuple[str, str] | None = None
    """Open/close strings of the model's reasoning blocks, when it has them."""
    architecture: str | None = None
    """The model's architecture (``LlamaForCausalLM``), where the harness knows it."""
    runtime: str | None = None
    """How the harness runs it: ``native`` or ``fallback`` (the torch harness's transformers fallback)."""
    tool_format: str | None = None
    """The tool-call format the model writes (``hermes``, ``llama3``, ``mistral``...; see
    `helexa.neuron.toolformats`), when the harness knows it; else the neuron detects it
    from ``chat_template`` and ``special_tokens``."""
    chat_template: str | None = None
    special_tokens: list[str] = msgspec.field(default_factory=list)
    """The tokenizer's added special tokens, as text."""
    constraints: bool = False
    """Whether the harness honours `Constraint` (structured outputs, forced tool calls)."""


class ChatPrompt(msgspec.Struct, kw_only=True):
    """Chat messages to render with the model's template (plain dicts, as templates expect)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final: bool = False
    """The last message is an assistant prefill: render it open, so the model continues it
    (transformers' ``continue_final_message``)."""


class Prompt(msgspec.Struct, kw_only=True):
    """A tokenized prompt. ``messages`` is kept for harnesses that look at the conversation."""

    text: str
    token_ids: list[int]
    messages: list[dict[str, Any]] | None = None
    media: Any = None
    """What a harness attaches to a prompt besides its tokens, carried from ``tokenize`` to
    ``generate`` untouched (the torch harness's preprocessed images)."""


class SamplingParams(msgspec.Struct, kw_only=True):
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    logprobs: int | None = None
    """Report each sampled token's log-probability and this many most likely alternatives (0..20);
    None: no log-probabilities. They are the model's own (log-softmax of its logits), before
    temperature, penalties, bias or constraints, as vLLM and OpenAI report them."""
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)
    """Added to the logits of these token ids before sampling (-100 bans, +100 forces)."""


class Constraint(msgspec.Struct, kw_only=True, frozen=True):
    """What the output must match, enforced token by token (structured outputs, forced tool calls).

    ``grammar`` is what a harness compiles: a Lark grammar in llguidance's dialect, where
    ``%json {schema}`` embeds a JSON schema. ``kind`` and ``schema`` describe the same
    constraint for harnesses that do not run a grammar engine (the echo harness):
    ``json`` (``schema`` is the JSON schema), ``regex``, ``grammar`` or ``tool_call``
    (``tools`` are the functions a call may name, ``tool_format`` the model's call format,
    ``max_calls`` 1 or None for any number).
    """

    kind: str
    grammar: str
    param: str
    """The request field it came from, for error messages (``response_format``, ``tool_choice``)."""
    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_format: str | None = None
    max_calls: int | None = None


class GenerationRequest(msgspec.Struct, kw_only=True):
    request_id: str
    prompt: Prompt
    sampling: SamplingParams
    constraint: Constraint | None = None
    group: str | None = None
    """Requests that share a group (the n choices of one API request) have the same prompt;
    a harness may compute it once and share its cache between them."""


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(msgspec.Struct, kw_only=True):
    """A sampled token's log-probability and the most likely tokens at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[TopLogprob] = msgspec.field(default_factory=list)


class Delta(msgspec.Struct, kw_only=True):
    """A step of generation: new text and the token ids it came from.

    The last delta carries ``finish_reason`` (``stop`` at EOS, ``length`` at
    max_tokens) and the final token counts.
    """

    text: str = ""
    token_ids: list[int] = msgspec.field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    """One entry per token in ``token_ids`` when the request asked for log-probabilities."""


@runtime_checkable
class Harness(Protocol):
    """What a harness plugin's factory returns."""

    name: str

    async def load(self, spec: ModelSpec, devices: list[int], progress: LoadProgress) -> LoadedModel:
        """Load ``spec.model_id`` onto ``devices``; raise `ApiError` (or any error) if it cannot."""
        ...

    async def unload(self, model_id: str) -> None:
        """Free everything the model holds."""
        ...

    async def tokenize(self, model_id: str, source: ChatPrompt | str) -> Prompt:
        """Render chat messages with the model's template (or take text as is) and tokenize."""
        ...

    def generate(self, model_id: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate; closing the iterator aborts the sequence and frees its memory."""
        ...

    def memory(self) -> dict[str, dict[int, int]]:
        """Memory in MB used per model and device right now."""
        ...

    async def close(self) -> None:
        """Release everything at shutdown (models are unloaded before this is called)."""
        ...


@runtime_checkable
class Parking(Protocol):
    """What a harness adds to park models: evicted, the weights stay in host memory.

    The neuron's model manager calls these, never while the model is generating, and
    keeps the host-memory budget (``neuron.park_mb``) itself.
    """

    def park_size(self, model_id: str) -> int | None:
        """Bytes of host memory the loaded model would hold once parked, or None if it cannot be parked."""
        ...

    async def park(self, model_id: str) -> None:
        """Free the model's device memory (KV cache, engine, weights on the device) and release its
        ledger reservation, keeping the weights in host memory (pinned where that makes the copy back
        fast). Raise if it cannot; the neuron then unloads it."""
        ...

    async def wake(self, model_id: str, devices: list[int], progress: LoadProgress) -> LoadedModel:
        """Bring a parked model back onto ``devices`` (reserving their memory as a load does) so that it
        answers exactly as after a cold load. Raise if it cannot; the neuron then drops the parked copy
        with ``unload`` and loads the model from its source. ``unload`` of a parked model frees it."""
        ...
