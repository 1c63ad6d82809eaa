"""The error envelopes of both protocols, as they cross HTTP (rendered by `helexa.errors.ApiError`)."""

from __future__ import annotations

from typing import Literal

import msgspec


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    """``invalid_request_error``, ``authentication_error``, ``not_found_error``, ``rate_limit_error``, ..."""
    code: str | None = None
    param: str | None = None
    """The request field that was wrong, when one was."""


class OpenAIError(msgspec.Struct, kw_only=True):
    """Every error on OpenAI routes; in a stream, one ``data:`` event followed by ``data: [DONE]``."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    """``invalid_request_error``, ``authentication_error``, ``not_found_error``, ``overloaded_error``, ..."""
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    """Every error on ``/v1/messages`` routes; in a stream, an ``event: error``."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
