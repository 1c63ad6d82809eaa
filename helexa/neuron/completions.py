"""OpenAI completions (raw prompts, no chat template) on top of the serving layer's generation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from helexa.errors import ApiError
from helexa.neuron.harness import Prompt
from helexa.neuron.models import Generation, ModelManager
from helexa.neuron.serving import DONE, Finish, Job, error_frame, events, job_for, new_id, refuse_unsupported
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
    return job


async def completion(manager: ModelManager, job: Job, generation: Generation, echo: bool) -> dict[str, Any]:
    parts = [job.prompt.text] if echo else []
    finish: Finish | None = None
    async for event in events(manager, job, generation):
        if isinstance(event, Finish):
            finish = event
        else:
            parts.append(event.text)
    assert finish is not None
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "text": "".join(parts),
                "finish_reason": finish.reason,
                "logprobs": None,
                "stop_reason": finish.stop_sequence,
            }
        ],
        "usage": msgspec.to_builtins(finish.usage),
    }


async def completion_stream(
    manager: ModelManager, job: Job, generation: Generation, echo: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    head = {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": job.model,
    }

    def frame(text: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return b"data: " + msgspec.json.encode({**head, "choices": [choice]}) + b"\n\n"

    try:
        if echo and job.prompt.text:
            yield frame(job.prompt.text)
        async for event in events(manager, job, generation):
            if isinstance(event, Finish):
                yield frame("", event.reason)
                if include_usage:
                    yield (
                        b"data: "
                        + msgspec.json.encode({**head, "choices": [], "usage": event.usage})
                        + b"\n\n"
                    )
            elif event.text:
                yield frame(event.text)
        yield DONE
    except ApiError as error:
        yield error_frame(error)
    except Exception as exc:
        yield error_frame(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}"))
