"""OpenAI semantics on top of any harness: chat completions, completions and tokenize.

Harness-independent: requests become a prompt (through the model's chat template)
and sampling parameters; the harness's text becomes content, ``reasoning_content``
and ``tool_calls``; stop strings end generation as soon as they appear; usage
counts real tokens. HTTP lives in `helexa.neuron.routes`; this module only
builds answers (whole, or as a stream of SSE bytes).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from helexa.errors import ApiError
from helexa.neuron import structured
from helexa.neuron.choices import Choices, chat_logprobs, interleaved
from helexa.neuron.forced_calls import FORCED_CALL_GRAMMARS, grammar_format
from helexa.neuron.harness import (
    Constraint,
    GenerationRequest,
    Prompt,
    SamplingParams,
    TokenLogprob,
)
from helexa.neuron.models import Generation, ModelEntry, ModelManager
from helexa.neuron.parsing import Event, OutputParser, StopMatcher, prompt_in_reasoning
from helexa.neuron.sampling import context_error, resolve_sampling
from helexa.neuron.thinking import budget as thinking_budget
from helexa.neuron.thinking import chat_prompt
from helexa.neuron.thinking import wrap as thinking_wrap
from helexa.wire import openai as oa

DONE = b"data: [DONE]\n\n"


MAX_CHOICES = 16


@dataclass
class Finish:
    reason: str
    usage: oa.Usage
    stop_sequence: str | None


@dataclass
class Logprobs:
    """Log-probabilities of the tokens a delta brought (they travel beside the text events)."""

    entries: list[TokenLogprob]


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
    constraint: Constraint | None = None
    n: int = 1
    single_call: bool = False
    """``parallel_tool_calls: false``: generation ends at the first complete tool call."""
    thinking_budget: int | None = None
    """Tokens the think block may take (`helexa.neuron.thinking`); None for no cap."""


def refuse_unsupported(request: oa.SamplingFields) -> None:
    if request.n > MAX_CHOICES:
        raise ApiError(400, f"n={request.n} is more than the {MAX_CHOICES} choices allowed", param="n")
    if request.best_of is not None and request.best_of > 1:
        raise ApiError(
            400,
            f"best_of={request.best_of} is not supported (choices are never generated and discarded); "
            "use n to get several choices",
            param="best_of",
        )


def constraint_for(
    request: oa.SamplingFields, tools: list[dict[str, Any]] | None, entry: ModelEntry
) -> Constraint | None:
    """The constraint a request asks for: a forced tool call, or a response format (not both)."""
    loaded = entry.loaded
    assert loaded is not None
    choice = getattr(request, "tool_choice", None)
    forced = structured.forced_tools(tools or [], choice) if choice not in (None, "auto", "none") else None
    if choice not in (None, "auto", "none") and not tools:
        raise ApiError(400, f"tool_choice {choice!r} needs tools to choose from", param="tool_choice")
    formats = [
        structured.response_format_constraint(getattr(request, "response_format", None)),
        structured.guided_constraint(request.structured_outputs),
    ]
    given = [c for c in formats if c is not None]
    if len(given) > 1:
        raise ApiError(
            400, "give either response_format or structured_outputs, not both", param="structured_outputs"
        )
    if forced and given:
        raise ApiError(
            400,
            "a forced tool_choice and a response format cannot both constrain one answer",
            param="tool_choice",
        )
    if forced:
        # A named function is called once (as OpenAI and vLLM do); "required" may call several
        # unless parallel_tool_calls is false.
        parallel = False if isinstance(choice, dict) else getattr(request, "parallel_tool_calls", None)
        fmt = grammar_format(loaded.tool_format, loaded.chat_template)
        if fmt not in FORCED_CALL_GRAMMARS:
            raise ApiError(
                400,
                f"tool_choice {choice!r}: calls in the {fmt!r} tool format of {entry.spec.model_id!r} "
                "cannot be forced (forced calls know: " + ", ".join(FORCED_CALL_GRAMMARS) + ")",
                param="tool_choice",
            )
        constraint = structured.tool_call_constraint(forced, fmt, parallel)
    else:
        constraint = given[0] if given else None
    if constraint is not None and not loaded.constraints:
        raise ApiError(
            400,
            f"{constraint.param}: the {entry.harness} harness serving {entry.spec.model_id!r} "
            "cannot constrain its output",
            param=constraint.param,
        )
    return constraint


def message_dicts(messages: list[oa.ChatMessage], vision: bool) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content joined, tool-call arguments as objects."""
    result = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        content = message.content
        if isinstance(content, list):
            other = next((part.type for part in content if part.type != "text"), None)
            if other is not None:
                if not vision:
                    raise ApiError(
                        400,
                        f"messages[{i}] has {other} content but this model only reads text",
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
    constraint = constraint_for(request, tools, entry)
    if request.tool_choice == "none":
        tools = None  # the model is not told about tools it may not call
    chat = chat_prompt(request, message_dicts(request.messages, "vision" in loaded.capabilities), tools)
    prompt = await manager.harness_of(entry).tokenize(request.model, chat)
    job = job_for(manager, entry, request, prompt, tools, started)
    job.constraint = constraint
    job.single_call = bool(tools) and request.parallel_tool_calls is False
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
        n=request.n,
    )


def _seed(seed: int | None, index: int) -> int | None:
    """Choice ``index``'s seed: distinct per choice, reproducible, still a signed 64-bit value."""
    if seed is None or index == 0:
        return seed
    return (seed + index + 2**63) % 2**64 - 2**63


def start(manager: ModelManager, job: Job) -> Choices:
    """Admit the job's choices (429 now, before any header, when the model is full)."""
    group = secrets.token_hex(8) if job.n > 1 else None
    choices = Choices()
    try:
        for index in range(job.n):
            sampling = msgspec.structs.replace(job.sampling, seed=_seed(job.sampling.seed, index))
            request = GenerationRequest(
                request_id=secrets.token_hex(8),
                prompt=job.prompt,
                sampling=sampling,
                constraint=job.constraint,
                group=group,
            )
            choices.append(thinking_wrap(manager.generate(job.entry, request), job))
    except BaseException:
        for generation in choices:
            generation.ticket.release()
        raise
    return choices


async def events(
    manager: ModelManager, job: Job, generation: Generation
) -> AsyncIterator[Event | Logprobs | Finish]:
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
            if delta.logprobs:
                yield Logprobs(delta.logprobs)
            for event in parser.feed(stops.feed(delta.text)):
                called = called or event.kind == "tool_call"
                yield event
                if called and job.single_call:
                    break
            if called and job.single_call:  # parallel_tool_calls false: one call, then the answer ends
                reason, generation.finished = "stop", True
                break
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
    for event in [] if called and job.single_call else parser.feed(stops.flush()) + parser.finish():
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


def total_usage(finishes: list[Finish]) -> oa.Usage:
    """One request's usage over its choices: the prompt counted once, every choice's tokens."""
    first = finishes[0].usage
    completion = sum(f.usage.completion_tokens for f in finishes)
    return oa.Usage(
        prompt_tokens=first.prompt_tokens,
        completion_tokens=completion,
        total_tokens=first.prompt_tokens + completion,
        prompt_tokens_details=first.prompt_tokens_details,
    )


async def _chat_choice(
    manager: ModelManager, job: Job, generation: Generation, index: int
) -> tuple[dict, Finish]:
    content, reasoning, calls, logprobs = [], [], [], []
    finish: Finish | None = None
    async for event in events(manager, job, generation):
        if isinstance(event, Finish):
            finish = event
        elif isinstance(event, Logprobs):
            logprobs.extend(event.entries)
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
    choice = {
        "index": index,
        "message": message,
        "finish_reason": finish.reason,
        "logprobs": chat_logprobs(logprobs) if job.sampling.logprobs is not None else None,
        "stop_reason": finish.stop_sequence,
    }
    return choice, finish


async def gather_choices(coroutines: list[Any]) -> list[Any]:
    """Run the choices side by side; if one fails the others are cancelled (closing their generations)."""
    if len(coroutines) == 1:
        return [await coroutines[0]]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(c) for c in coroutines]
    return [t.result() for t in tasks]


async def chat_completion(manager: ModelManager, job: Job, generations: Choices) -> dict[str, Any]:
    try:
        done = await gather_choices([_chat_choice(manager, job, g, i) for i, g in enumerate(generations)])
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [choice for choice, _ in done],
        "usage": msgspec.to_builtins(total_usage([finish for _, finish in done])),
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
        self,
        delta: dict[str, Any],
        finish: str | None = None,
        usage: oa.Usage | None = None,
        index: int = 0,
        logprobs: list[TokenLogprob] | None = None,
        **extra: Any,
    ) -> bytes:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": chat_logprobs(logprobs) if logprobs else None,
            "finish_reason": finish,
            **extra,
        }
        chunk = {**self.head, "choices": [choice]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    def usage(self, usage: oa.Usage) -> bytes:
        return b"data: " + msgspec.json.encode({**self.head, "choices": [], "usage": usage}) + b"\n\n"


def error_frame(error: ApiError) -> bytes:
    return b"data: " + msgspec.json.encode(error.openai_body()) + b"\n\n" + DONE


async def chat_stream(
    manager: ModelManager, job: Job, generations: Choices, options: oa.StreamOptions | None
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(job.model)
    calls = [0] * len(generations)
    pending: list[list[TokenLogprob]] = [[] for _ in generations]
    finishes: list[Finish] = []
    include_usage = bool(options and options.include_usage)
    try:
        for index in range(len(generations)):
            usage = None
            if include_usage and options.continuous_usage_stats:  # vLLM-style: the prompt size, at once
                prompt = len(job.prompt.token_ids)
                usage = oa.Usage(prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt)
            yield writer.frame({"role": "assistant", "content": ""}, usage=usage, index=index)
        streams = [events(manager, job, g) for g in generations]
        async for index, event in interleaved(streams):
            if isinstance(event, Logprobs):
                pending[index].extend(event.entries)
                continue
            logprobs, pending[index] = pending[index], []
            if isinstance(event, Finish):
                finishes.append(event)
                yield writer.frame(
                    {}, event.reason, index=index, logprobs=logprobs, stop_reason=event.stop_sequence
                )
            elif event.kind == "content":
                yield writer.frame({"content": event.text}, index=index, logprobs=logprobs)
            elif event.kind == "reasoning":
                yield writer.frame({"reasoning_content": event.text}, index=index, logprobs=logprobs)
            elif event.call is not None:
                call = event.call
                delta = {
                    "tool_calls": [
                        {
                            "index": calls[index],
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                    ]
                }
                yield writer.frame(delta, index=index, logprobs=logprobs)
                calls[index] += 1
        if include_usage:
            yield writer.usage(total_usage(finishes))
        yield DONE
    except ApiError as error:
        yield error_frame(error)
    except Exception as exc:  # the stream is already open: end it in-protocol, never a silent cut
        yield error_frame(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}"))
