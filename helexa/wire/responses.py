"""OpenAI Responses API requests (``POST /v1/responses``) as they cross HTTP.

Input items and tools stay plain dicts: the translator (`helexa.translate.responses`)
checks each by its ``type``, so an unknown one is a 400 that names it and a hosted
tool that cannot run here is logged, never silently dropped. Answers are built as
plain JSON by `helexa.neuron.responses`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class Reasoning(msgspec.Struct, kw_only=True):
    effort: str | None = None
    """``none``, ``minimal``, ``low``, ``medium``, ``high`` (``xhigh``): the template's switch."""
    summary: str | None = None
    """``auto``, ``concise``, ``detailed``: the think block is returned as the summary."""
    generate_summary: str | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_logprobs: int | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    include: list[str] | None = None
    truncation: str | None = None
    prompt: dict[str, Any] | None = None
    # Metadata clients send routinely; nothing to do with it here (documented in docs/api.md).
    metadata: dict[str, Any] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    client_metadata: dict[str, Any] | None = None
    """Codex's own request metadata (installation and session ids)."""
