"""helexa-echo: a harness that replays text at a set speed instead of running a model.

It is the worked example of a harness plugin (docs/plugins.md) and the test double
every helexa test uses. It behaves like a real harness where the neuron can tell:
models take memory on the devices they are loaded on (a full device refuses a
load), loads take time and report progress, tokens come at a configured rate,
``max_tokens``, ``min_tokens`` and ``ignore_eos`` are honoured, closing the stream
stops it, and token counts are real counts of what it emits.

What it says: the last user message, or a script. Options come from
``[harness.echo]`` in neuron.toml, overridden per model by the load request's
``options``:

``tokens_per_second``  0 means as fast as possible (default 50)
``size_mb``            memory the model takes on each device (default 256)
``max_model_len``      context length (default 8192)
``load_seconds``       how long a load takes (default 0)
``fail_load``          if set, loads fail with this message
``wake_seconds``       how long waking a parked model takes (default 0)
``fail_wake``          if set, waking the parked model fails with this message
``parkable``           whether eviction may park the model (default true); a parked
                       model holds ``size_mb`` of host memory and no device memory
``capabilities``       default ``["text", "tools"]``
``script``             text to say instead of echoing; a list is used turn by turn
                       (entry = number of assistant turns so far). Placeholders:
                       ``{last_user}``, ``{last_tool}``, ``{params}`` (the sampling
                       parameters as JSON), ``{prompt_tokens}``
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from helexa import hookimpl
from helexa.neuron.harness import (
    ChatPrompt,
    Delta,
    GenerationRequest,
    HarnessContext,
    LoadedModel,
    LoadProgress,
    Prompt,
)
from helexa.wire.fleet import ModelSpec

DEFAULTS: dict[str, Any] = {
    "tokens_per_second": 50.0,
    "size_mb": 256,
    "max_model_len": 8192,
    "load_seconds": 0.0,
    "fail_load": None,
    "wake_seconds": 0.0,
    "fail_wake": None,
    "parkable": True,
    "capabilities": ["text", "tools"],
    "script": None,
}
# A token is a marker like <think>, a word with its leading space, one punctuation mark, or whitespace.
PLACEHOLDER = re.compile(r"\{(last_user|last_tool|params|prompt_tokens)\}")
TOKEN = re.compile(r"<[^<>\s]{1,32}>|\s*[\w']+|\s*[^\w\s]|\s+")


def split_tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def token_id(piece: str) -> int:
    return 1 + zlib.crc32(piece.encode()) % 49_999


def render(chat: ChatPrompt) -> str:
    """A ChatML-like rendering, so token counts grow with messages and tools as with real templates."""
    parts = []
    if chat.tools:
        parts.append("<|im_start|>system\n# Tools\n" + json.dumps(chat.tools) + "<|im_end|>\n")
    for message in chat.messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        for call in message.get("tool_calls") or []:
            text += "<tool_call>" + json.dumps(call.get("function")) + "</tool_call>"
        parts.append(f"<|im_start|>{message['role']}\n{text}<|im_end|>\n")
    if chat.add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
        if chat.template_kwargs.get("enable_thinking"):
            parts.append("<think>\n")
    return "".join(parts)


class EchoHarness:
    name = "echo"

    def __init__(self, context: HarnessContext) -> None:
        self.context = context
        self.models: dict[str, dict[str, Any]] = {}
        self.usage: dict[str, dict[int, int]] = {}
        self.parked: dict[str, dict[str, Any]] = {}

    async def load(self, spec: ModelSpec, devices: list[int], progress: LoadProgress) -> LoadedModel:
        options = {**DEFAULTS, **self.context.options, **spec.options}
        size = int(options["size_mb"])
        need = {device: size for device in devices}
        self.context.ledger.reserve(spec.model_id, need)  # a full device refuses the load here
        try:
            steps = 4
            for step in range(steps):
                progress("reading weights", step / steps)
                await asyncio.sleep(float(options["load_seconds"]) / steps)
            if options["fail_load"]:
                raise RuntimeError(str(options["fail_load"]))
        except BaseException:
            self.context.ledger.release(spec.model_id)
            raise
        progress("ready", 1.0)
        self.models[spec.model_id] = options
        self.usage[spec.model_id] = need
        return self._loaded(spec.model_id, devices, need, options)

    @staticmethod
    def _loaded(
        model_id: str, devices: list[int], need: dict[int, int], options: dict[str, Any]
    ) -> LoadedModel:
        return LoadedModel(
            model_id=model_id,
            devices=devices,
            memory_mb=need,
            capabilities=list(options["capabilities"]),
            max_model_len=int(options["max_model_len"]),
            think_markers=("<think>", "</think>"),
        )

    async def unload(self, model_id: str) -> None:
        self.models.pop(model_id, None)
        self.parked.pop(model_id, None)
        self.usage.pop(model_id, None)
        self.context.ledger.release(model_id)

    # Parking: the model's "weights" (its options) stay; its device memory is released.

    def park_size(self, model_id: str) -> int | None:
        options = self.models.get(model_id)
        if options is None or not options["parkable"]:
            return None
        return int(options["size_mb"]) * 1024 * 1024

    async def park(self, model_id: str) -> None:
        self.parked[model_id] = self._options(model_id)
        self.models.pop(model_id)
        self.usage.pop(model_id, None)
        self.context.ledger.release(model_id)

    async def wake(self, model_id: str, devices: list[int], progress: LoadProgress) -> LoadedModel:
        options = self.parked[model_id]
        if options["fail_wake"]:
            raise RuntimeError(str(options["fail_wake"]))
        need = {device: int(options["size_mb"]) for device in devices}
        self.context.ledger.reserve(model_id, need)
        progress("copying weights back", 0.0)
        try:
            await asyncio.sleep(float(options["wake_seconds"]))
        except BaseException:
            self.context.ledger.release(model_id)
            raise
        progress("ready", 1.0)
        self.models[model_id] = self.parked.pop(model_id)
        self.usage[model_id] = need
        return self._loaded(model_id, devices, need, options)

    async def tokenize(self, model_id: str, source: ChatPrompt | str) -> Prompt:
        self._options(model_id)
        if isinstance(source, str):
            return Prompt(text=source, token_ids=[token_id(p) for p in split_tokens(source)])
        text = render(source)
        return Prompt(
            text=text, token_ids=[token_id(p) for p in split_tokens(text)], messages=source.messages
        )

    async def generate(self, model_id: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        options = self._options(model_id)
        pieces = split_tokens(self._text(options, request)) or [" "]
        sampling = request.sampling
        rate = float(options["tokens_per_second"])
        delay = 1.0 / rate if rate > 0 else 0.0
        # The text's natural end is where a model would emit EOS; min_tokens and ignore_eos push past it.
        natural = max(len(pieces), sampling.min_tokens)
        if sampling.ignore_eos or natural >= sampling.max_tokens:
            count, finish = sampling.max_tokens, "length"
        else:
            count, finish = natural, "stop"
        started = time.monotonic()
        for i in range(count):
            # Paced against the clock, not by sleeping a fixed delay: event-loop timers fire a little
            # early or late, and over a stream that adds up to a wrong rate.
            await asyncio.sleep(max(0.0, started + (i + 1) * delay - time.monotonic()) if delay else 0)
            piece = pieces[i % len(pieces)]
            last = i == count - 1
            yield Delta(
                text=piece,
                token_ids=[token_id(piece)],
                finish_reason=finish if last else None,
                prompt_tokens=len(request.prompt.token_ids) if last else None,
            )

    def _options(self, model_id: str) -> dict[str, Any]:
        options = self.models.get(model_id)
        if options is None:
            raise LookupError(f"echo harness has no model {model_id!r}")
        return options

    def _text(self, options: dict[str, Any], request: GenerationRequest) -> str:
        messages = request.prompt.messages or []
        script = options["script"]
        if script is None:
            users = [m for m in messages if m.get("role") == "user"]
            if not users:
                return request.prompt.text
            content = users[-1].get("content")
            return content if isinstance(content, str) else json.dumps(content)
        if isinstance(script, list):
            turn = sum(m.get("role") == "assistant" for m in messages)
            script = script[min(turn, len(script) - 1)]
        return PLACEHOLDER.sub(lambda m: _placeholder(m[1], messages, request), str(script))

    def memory(self) -> dict[str, dict[int, int]]:
        return {model_id: dict(need) for model_id, need in self.usage.items()}

    async def close(self) -> None:
        self.models.clear()
        self.parked.clear()


def _placeholder(key: str, messages: list[dict[str, Any]], request: GenerationRequest) -> str:
    if key == "params":
        return json.dumps(msgspec.to_builtins(request.sampling), sort_keys=True)
    if key == "prompt_tokens":
        return str(len(request.prompt.token_ids))
    role = key.removeprefix("last_")
    found = [m for m in messages if m.get("role") == role]
    content = found[-1].get("content") if found else ""
    return content if isinstance(content, str) else json.dumps(content)


@hookimpl
def register_harnesses(register):
    register("echo", EchoHarness)
