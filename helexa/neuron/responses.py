"""OpenAI Responses (``POST /v1/responses``) on the neuron, beside chat and completions.

A Responses request becomes a chat request (`helexa.translate.responses`), so it
shares everything chat has: the template, thinking, tool formats, sampling and the
generation path. Its output is built by `ResponseBuilder`: whole, or as the named
SSE events. Stateless, as the system it re-creates: ``store: true`` and
``previous_response_id`` are refused with a clear code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from helexa import sse
from helexa.errors import ApiError
from helexa.neuron import serving
from helexa.neuron.models import Generation, ModelManager
from helexa.neuron.response_events import ResponseBuilder, usage
from helexa.translate.responses import Translation, to_chat
from helexa.wire import openai as oa
from helexa.wire.responses import ResponsesRequest

log = logging.getLogger("helexa.neuron.responses")


@dataclass
class ResponseJob:
    request: ResponsesRequest
    chat: oa.ChatCompletionRequest
    job: serving.Job
    translation: Translation

    def builder(self) -> ResponseBuilder:
        return ResponseBuilder(self.request, self.translation.custom_tools, self.translation.namespaces)


async def prepare(manager: ModelManager, request: ResponsesRequest) -> ResponseJob:
    translation = to_chat(request)
    if translation.skipped:
        log.info(
            "%s: hosted tools cannot run here and were left out of the prompt: %s",
            request.model,
            ", ".join(sorted(set(translation.skipped))),
        )
    chat = msgspec.convert(translation.body, oa.ChatCompletionRequest)
    job = await serving.prepare_chat(manager, chat)
    return ResponseJob(request, chat, job, translation)


async def _run(
    manager: ModelManager, prepared: ResponseJob, generation: Generation, builder: ResponseBuilder
):
    """Builder events for a whole generation (without the opening two)."""
    job = prepared.job
    async for event in serving.events(manager, job, generation):
        if isinstance(event, serving.Finish):
            counts = event.usage
            cached = counts.prompt_tokens_details.cached_tokens if counts.prompt_tokens_details else 0
            reasoning = getattr(generation, "reasoning_tokens", 0)
            for out in builder.finish(
                event.reason, usage(counts.prompt_tokens, counts.completion_tokens, cached, reasoning)
            ):
                yield out
        else:
            for out in builder.feed(event):
                yield out


async def response(manager: ModelManager, prepared: ResponseJob, generation: Generation) -> dict[str, Any]:
    builder = prepared.builder()
    final: dict[str, Any] | None = None
    async for event in _run(manager, prepared, generation, builder):
        if event["type"] in ("response.completed", "response.incomplete"):
            final = event["response"]
    assert final is not None
    return final


def frame(event: dict[str, Any]) -> bytes:
    return sse.json_frame(event, event["type"])


async def stream(
    manager: ModelManager, prepared: ResponseJob, generation: Generation
) -> AsyncIterator[bytes]:
    builder = prepared.builder()
    try:
        for event in builder.start():
            yield frame(event)
        async for event in _run(manager, prepared, generation, builder):
            yield frame(event)
    except ApiError as error:
        for event in builder.failed(error):
            yield frame(event)
    except Exception as exc:  # the stream is open: end it in-protocol, never a silent cut
        log.exception("responses stream for %s failed", prepared.job.model)
        for event in builder.failed(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}")):
            yield frame(event)
