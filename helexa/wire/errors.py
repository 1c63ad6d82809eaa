"""The two error envelopes: OpenAI's ``{"error": {...}}`` and Anthropic's ``{"type": "error", ...}``."""

from __future__ import annotations

import msgspec


class OpenAIErrorBody(msgspec.Struct, kw_only=True):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class OpenAIError(msgspec.Struct, kw_only=True):
    error: OpenAIErrorBody


class AnthropicErrorBody(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True, tag="error", tag_field="type"):
    error: AnthropicErrorBody
