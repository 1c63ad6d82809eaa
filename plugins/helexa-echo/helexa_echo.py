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
``tool_format``        the tool-call format it claims to write (default: detected, ``hermes``)
``chat_template``      the chat template it reports (default none), for format detection
``script``             text to say instead of echoing; a list is used turn by turn
                       (entry = number of assistant turns so far). Placeholders:
                       ``{last_user}``, ``{last_tool}``, ``{params}`` (the sampling
                       parameters as JSON), ``{prompt_tokens}``

Constraints are honoured the way a model under a grammar would be: a JSON answer says
the scripted text if it is JSON of the right shape, else the simplest value of the
schema; a forced tool call says the scripted call if it names an allowed tool, else a
call of the first allowed tool with the simplest arguments. Regex and Lark grammars
need a grammar engine and are refused (400). Log-probabilities are 0.0 (the echo is
certain of every token).

Like a model, it continues what the prompt started: after an assistant prefill it
says the rest of its text, and when the prompt ends after a closed think block (a
thinking budget closed it) it goes on with what follows the think block.
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
from helexa.errors import ApiError
from helexa.neuron.harness import (
    ChatPrompt,
    Constraint,
    Delta,
    GenerationRequest,
    HarnessContext,
    LoadedModel,
    LoadProgress,
    Prompt,
    TokenLogprob,
    TopLogprob,
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
    "tool_format": None,
    "chat_template": None,
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
    for i, message in enumerate(chat.messages):
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        for call in message.get("tool_calls") or []:
            text += "<tool_call>" + json.dumps(call.get("function")) + "</tool_call>"
        if chat.continue_final and i == len(chat.messages) - 1:
            parts.append(f"<|im_start|>{message['role']}\n{text}")  # left open: the model continues it
        else:
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
            tool_format=options["tool_format"],
            chat_template=options["chat_template"],
            constraints=True,
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
        text = self._continued(self._text(options, request), request.prompt.text)
        if request.constraint is not None:
            text = constrained(text, request.constraint)
        pieces = split_tokens(text) or [" "]
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
            logprobs = None
            if sampling.logprobs is not None:
                top = [TopLogprob(token=piece, logprob=0.0)] if sampling.logprobs else []
                logprobs = [TokenLogprob(token=piece, logprob=0.0, bytes=list(piece.encode()), top=top)]
            yield Delta(
                text=piece,
                token_ids=[token_id(piece)],
                finish_reason=finish if last else None,
                prompt_tokens=len(request.prompt.token_ids) if last else None,
                logprobs=logprobs,
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

    @staticmethod
    def _continued(text: str, prompt: str) -> str:
        """What is left to say when the prompt already holds part of this turn."""
        _, opened, turn = prompt.rpartition("<|im_start|>assistant\n")
        if not opened:  # a raw prompt: nothing of this turn is in it
            return text
        if "</think>" in turn and "</think>" in text:  # the think block was closed for us
            return text.partition("</think>")[2]
        if turn and text.startswith(turn):  # an assistant prefill: say the rest
            return text[len(turn) :]
        return text

    def memory(self) -> dict[str, dict[int, int]]:
        return {model_id: dict(need) for model_id, need in self.usage.items()}

    async def close(self) -> None:
        self.models.clear()
        self.parked.clear()


def simplest(schema: Any) -> Any:
    """The simplest value a JSON schema accepts (what a model forced by it could say)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return simplest(schema[key][0])
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        properties = schema.get("properties") or {}
        return {k: simplest(properties.get(k, {})) for k in schema.get("required", [])}
    if kind == "array":
        return [simplest(schema.get("items", {})) for _ in range(int(schema.get("minItems", 0)))]
    return {"string": "", "integer": 0, "number": 0, "boolean": False}.get(kind)


def _shaped(value: Any, schema: dict[str, Any]) -> bool:
    """A light check that scripted JSON fits a schema: type, enum and required keys, recursively."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    if isinstance(kind, str) and kind in types and not isinstance(value, types[kind]):
        return False
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        if any(k not in value for k in schema.get("required", [])):
            return False
        return all(_shaped(v, properties.get(k, {})) for k, v in value.items())
    if isinstance(value, list):
        return all(_shaped(v, schema.get("items", {})) for v in value)
    return True


def constrained(text: str, constraint: Constraint) -> str:
    if constraint.kind == "json":
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if value is None or not _shaped(value, constraint.schema or {}):
            value = simplest(constraint.schema)
        return json.dumps(value)
    if constraint.kind == "tool_call":
        return _forced_call(text, constraint)
    raise ApiError(
        400,
        f"{constraint.param}: the echo harness cannot follow {constraint.kind} constraints",
        param=constraint.param,
    )


def _forced_call(text: str, constraint: Constraint) -> str:
    tools = {t["function"]["name"]: t["function"] for t in constraint.tools or []}
    scripted = re.search(r'"name":\s*"([^"]+)"', text)
    if scripted and scripted[1] in tools and "<tool_call>" in text:
        return text[text.index("<tool_call>") :]
    name, function = next(iter(tools.items()))
    arguments = simplest(function.get("parameters") or {"type": "object"})
    if constraint.tool_format == "qwen_xml":
        params = "".join(
            f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
            for k, v in arguments.items()
        )
        return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


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
