"""OpenAI semantics on top of any harness: chat completions, completions and tokenize.

Harness-independent: requests become a prompt (through the model's chat template)
and sampling parameters; the harness's text becomes content, ``reasoning_content``
and ``tool_calls``; stop strings end generation as soon as they appear; usage
counts real tokens. HTTP lives in `helexa.neuron.routes`; this module only
builds answers (whole, or as a stream of SSE bytes).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from helexa.errors import ApiError
from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa.neuron.models import Generation, ModelEntry, ModelManager
from helexa.neuron.parsing import Event, OutputParser, StopMatcher, prompt_in_reasoning
from helexa.neuron.sampling import context_error, resolve_sampling
from helexa.neuron.thinking import budget as thinking_budget
from helexa.neuron.thinking import chat_prompt
from helexa.neuron.thinking import wrap as thinking_wrap
from helexa.wire import openai as oa

DONE = b"data: [DONE]\n\n"


@dataclass
class Finish:
    reason: str
    usage: oa.Usage
    stop_sequence: str | None


@dataclass
class Job:
    """A request ready to generate: its model, prompt, parameters and how to read the output."""

    entry: ModelEntry
    model: str
    prompt: Prompt
    sampling: SamplingParams
    stops: list[str]
    tools: list[dict[str, Any]] | None
    started: float
    reasoning: bool = True
    """Split reasoning from content (chat); completions return the raw text."""
    thinking_budget: int | None = None
    """Tokens the think block may take (`helexa.neuron.thinking`); None for no cap."""


def refuse_unsupported(request: oa.SamplingFields) -> None:
    if request.n != 1:
        raise ApiError(400, f"n={request.n} is not supported; send {request.n} requests instead", param="n")
    if request.logprobs:
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")


def message_dicts(messages: list[oa.ChatMessage], vision: bool) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content joined, tool-call arguments as objects."""
    result = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                if not vision:
                    raise ApiError(
                        400,
                        f"messages[{i}] has {content[0].type if content else 'non-text'} "
                        "content but this model only reads text",
                        code="vision_unsupported",
                        param=f"messages[{i}].content",
                    )
                item["content"] = [msgspec.to_builtins(part) for part in content]
            else:
                item["content"] = "\n".join(part.text or "" for part in content)
        else:
            item["content"] = content if content is not None else ""
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": c.type,
                    "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)},
                }
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        if message.reasoning_content:
            item["reasoning_content"] = message.reasoning_content
        result.append(item)
    return result


def _arguments(arguments: str | dict[str, Any]) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 16:
        raise ApiError(400, f"stop has {len(stops)} entries; at most 16 are allowed", param="stop")
    return stops


async def prepare_chat(manager: ModelManager, request: oa.ChatCompletionRequest) -> Job:
    started = time.monotonic()
    refuse_unsupported(request)
    if request.response_format and request.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "response_format other than text is not supported yet", param="response_format")
    if not request.messages:
        raise ApiError(400, "messages must not be empty", param="messages")
    entry = manager.get(request.model)
    loaded = entry.loaded
    assert loaded is not None
    tools = [msgspec.to_builtins(t) for t in request.tools] if request.tools else None
    if tools and "tools" not in loaded.capabilities:
        raise ApiError(
            400,
            f"model {request.model!r} does not support tools: its chat template has no place for them",
            code="tools_unsupported",
            param="tools",
        )
    if (
        tools
        and request.tool_choice not in (None, "auto", "required", "none")
        and not isinstance(request.tool_choice, dict)
    ):
        raise ApiError(
            400,
            f"tool_choice {request.tool_choice!r} is not one of auto, required, none or a named function",
            param="tool_choice",
        )
    chat = chat_prompt(request, message_dicts(request.messages, "vision" in loaded.capabilities), tools)
    prompt = await manager.harness_of(entry).tokenize(request.model, chat)
    job = job_for(manager, entry, request, prompt, tools if request.tool_choice != "none" else None, started)
    job.thinking_budget = thinking_budget(request, chat.template_kwargs)
    return job


def job_for(
    manager: ModelManager,
    entry: ModelEntry,
    request: oa.SamplingFields,
    prompt: Prompt,
    tools: list[dict[str, Any]] | None,
    started: float,
) -> Job:
    loaded = entry.loaded
    assert loaded is not None
    max_len = loaded.max_model_len
    cap = manager.settings.neuron.max_prompt_tokens
    if cap and len(prompt.token_ids) > cap:
        raise context_error(cap, len(prompt.token_ids))
    sampling = resolve_sampling(request, loaded.defaults, max_len, len(prompt.token_ids))
    return Job(
        entry=entry,
        model=request.model,
        prompt=prompt,
        sampling=sampling,
        stops=_stops(request.stop),
        tools=tools,
        started=started,
    )


def start(manager: ModelManager, job: Job) -> Generation:
    """Admit the job (429 now, before any header, when the model is full)."""
    request = GenerationRequest(request_id=secrets.token_hex(8), prompt=job.prompt, sampling=job.sampling)
    return thinking_wrap(manager.generate(job.entry, request), job)


async def events(manager: ModelManager, job: Job, generation: Generation) -> AsyncIterator[Event | Finish]:
    """Parsed output of a generation, ending with a `Finish`; always closes the generation."""
    loaded = job.entry.loaded
    assert loaded is not None
    think = loaded.think_markers if job.reasoning else None
    fmt = manager.tool_formats.get(loaded.tool_format)
    parser = OutputParser(think, prompt_in_reasoning(job.prompt.text, think), job.tools, fmt)
    stops = StopMatcher(job.stops)
    metrics, model = manager.metrics, job.model
    completion = cached = 0
    reason: str | None = None
    called = False
    try:
        async for delta in generation:
            if completion == 0 and delta.token_ids:
                metrics.ttft.labels(model).observe(time.monotonic() - job.started)
            completion += len(delta.token_ids)
            cached = delta.cached_tokens or cached
            for event in parser.feed(stops.feed(delta.text)):
                called = called or event.kind == "tool_call"
                yield event
            if stops.matched is not None:
                reason, generation.finished = "stop", True
                break
            if delta.finish_reason is not None:
                reason = delta.finish_reason
                break
    finally:
        await generation.aclose()
        metrics.generated_tokens.labels(model).inc(completion)
        metrics.prompt_tokens.labels(model).inc(len(job.prompt.token_ids))
    if reason is None:
        raise ApiError(
            503,
            f"generation for {model!r} stopped before it finished (was the model unloaded?)",
            code="generation_aborted",
        )
    for event in parser.feed(stops.flush()) + parser.finish():
        called = called or event.kind == "tool_call"
        yield event
    if called and reason == "stop":
        reason = "tool_calls"
    prompt_tokens = len(job.prompt.token_ids)
    usage = oa.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=cached),
    )
    yield Finish(reason, usage, stops.matched)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


async def chat_completion(manager: ModelManager, job: Job, generation: Generation) -> dict[str, Any]:
    content, reasoning, calls = [], [], []
    finish: Finish | None = None
    async for event in events(manager, job, generation):
        if isinstance(event, Finish):
            finish = event
        elif event.kind == "content":
            content.append(event.text)
        elif event.kind == "reasoning":
            reasoning.append(event.text)
        elif event.call is not None:
            calls.append(
                {
                    "id": event.call.id,
                    "type": "function",
                    "function": {"name": event.call.name, "arguments": event.call.arguments},
                }
            )
    assert finish is not None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content) if content or not calls else None,
    }
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish.reason,
                "logprobs": None,
                "stop_reason": finish.stop_sequence,
            }
        ],
        "usage": msgspec.to_builtins(finish.usage),
    }


class ChunkWriter:
    """Encodes chat.completion.chunk SSE frames that share one id and created time."""

    def __init__(self, model: str) -> None:
        self.head = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def frame(
        self, delta: dict[str, Any], finish: str | None = None, usage: oa.Usage | None = None, **extra: Any
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
        chunk = {**self.head, "choices": [choice]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    def usage(self, usage: oa.Usage) -> bytes:
        return b"data: " + msgspec.json.encode({**self.head, "choices": [], "usage": usage}) + b"\n\n"


def error_frame(error: ApiError) -> bytes:
    return b"data: " + msgspec.json.encode(error.openai_body()) + b"\n\n" + DONE


async def chat_stream(
    manager: ModelManager, job: Job, generation: Generation, options: oa.StreamOptions | None
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(job.model)
    calls = 0
    include_usage = bool(options and options.include_usage)
    try:
        first = writer.frame({"role": "assistant", "content": ""})
        if include_usage and options.continuous_usage_stats:  # vLLM-style: the prompt size, at once
            prompt = len(job.prompt.token_ids)
            first = writer.frame(
                {"role": "assistant", "content": ""},
                usage=oa.Usage(prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt),
            )
        yield first
        async for event in events(manager, job, generation):
            if isinstance(event, Finish):
                yield writer.frame({}, event.reason, stop_reason=event.stop_sequence)
                if include_usage:
                    yield writer.usage(event.usage)
            elif event.kind == "content":
                yield writer.frame({"content": event.text})
            elif event.kind == "reasoning":
                yield writer.frame({"reasoning_content": event.text})
            elif event.call is not None:
                call = event.call
                yield writer.frame(
                    {
                        "tool_calls": [
                            {
                                "index": calls,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": call.arguments},
                            }
                        ]
                    }
                )
                calls += 1
        yield DONE
    except ApiError as error:
        yield error_frame(error)
    except Exception as exc:  # the stream is already open: end it in-protocol, never a silent cut
        yield error_frame(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}"))
