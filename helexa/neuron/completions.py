"""OpenAI completions (raw prompts, no chat template) on top of the serving layer's generation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from helexa import sse
from helexa.errors import ApiError
from helexa.neuron.choices import Choices, completion_logprobs, interleaved
from helexa.neuron.harness import Prompt, TokenLogprob
from helexa.neuron.models import Generation, ModelManager
from helexa.neuron.serving import (
    DONE,
    Finish,
    Job,
    Logprobs,
    constraint_for,
    error_frame,
    events,
    gather_choices,
    job_for,
    new_id,
    refuse_unsupported,
    total_usage,
)
from helexa.wire import openai as oa


async def prepare_completion(manager: ModelManager, request: oa.CompletionRequest) -> Job:
    started = time.monotonic()
    refuse_unsupported(request)
    if request.suffix:
        raise ApiError(400, "suffix is not supported", param="suffix")
    entry = manager.get(request.model)
    source = request.prompt
    if isinstance(source, list) and source and all(isinstance(t, int) for t in source):
        prompt = Prompt(text="", token_ids=list(source))  # type: ignore[arg-type]
    else:
        if isinstance(source, list):
            if len(source) != 1 or not isinstance(source[0], str):
                raise ApiError(
                    400,
                    "prompt lists with more than one prompt are not supported; send one request per prompt",
                    param="prompt",
                )
            source = source[0]
        prompt = await manager.harness_of(entry).tokenize(request.model, str(source))
    job = job_for(manager, entry, request, prompt, None, started)
    job.reasoning = False
    job.constraint = constraint_for(request, None, entry)
    return job


async def _choice(
    manager: ModelManager, job: Job, generation: Generation, index: int, echo: bool
) -> tuple[dict[str, Any], Finish]:
    parts = [job.prompt.text] if echo else []
    entries: list[TokenLogprob] = []
    finish: Finish | None = None
    async for event in events(manager, job, generation):
        if isinstance(event, Finish):
            finish = event
        elif isinstance(event, Logprobs):
            entries.extend(event.entries)
        else:
            parts.append(event.text)
    assert finish is not None
    offset = len(job.prompt.text) if echo else 0
    choice = {
        "index": index,
        "text": "".join(parts),
        "finish_reason": finish.reason,
        "logprobs": completion_logprobs(entries, offset) if job.sampling.logprobs is not None else None,
        "stop_reason": finish.stop_sequence,
    }
    return choice, finish


async def completion(manager: ModelManager, job: Job, generations: Choices, echo: bool) -> dict[str, Any]:
    try:
        done = await gather_choices([_choice(manager, job, g, i, echo) for i, g in enumerate(generations)])
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [choice for choice, _ in done],
        "usage": msgspec.to_builtins(total_usage([finish for _, finish in done])),
    }


async def completion_stream(
    manager: ModelManager, job: Job, generations: Choices, echo: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    head = {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model,
    }
    offsets = [len(job.prompt.text) if echo else 0] * len(generations)
    pending: list[list[TokenLogprob]] = [[] for _ in generations]
    finishes: list[Finish] = []

    def frame(index: int, text: str, finish: str | None = None) -> bytes:
        entries, pending[index] = pending[index], []
        logprobs = None
        if job.sampling.logprobs is not None and (entries or finish is None):
            logprobs = completion_logprobs(entries, offsets[index])
        offsets[index] += len(text)
        choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}
        return sse.json_frame({**head, "choices": [choice]})

    try:
        if echo and job.prompt.text:
            for index in range(len(generations)):
                choice = {"index": index, "text": job.prompt.text, "finish_reason": None, "logprobs": None}
                yield sse.json_frame({**head, "choices": [choice]})
        async for index, event in interleaved([events(manager, job, g) for g in generations]):
            if isinstance(event, Logprobs):
                pending[index].extend(event.entries)
            elif isinstance(event, Finish):
                finishes.append(event)
                yield frame(index, "", event.reason)
            elif event.text:
                yield frame(index, event.text)
        if include_usage:
            usage = total_usage(finishes)
            yield sse.json_frame({**head, "choices": [], "usage": usage})
        yield DONE
    except ApiError as error:
        yield error_frame(error)
    except Exception as exc:
        yield error_frame(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}"))
