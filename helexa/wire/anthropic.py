"""Anthropic Messages requests as they cross HTTP.

Content blocks stay plain dicts here: the translator checks each block by its
``type`` so an unknown type is a 400 that names it, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class AnthropicMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[AnthropicMessage]
    max_tokens: Annotated[int, Meta(ge=1)]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    """``effort`` (low/medium/high/max) and ``format`` (structured output)."""
    context_management: dict[str, Any] | None = None
    """Context edits (``clear_thinking_20251015``, ``clear_tool_uses_20250919``), as Claude Code sends."""
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    output_config: dict[str, Any] | None = None
    """``format``: structured output (``{"type": "json_schema", "schema": ...}``)."""


class CountTokensRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[AnthropicMessage]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
