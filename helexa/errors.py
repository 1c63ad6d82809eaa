"""`ApiError`: a failure a client should see, with the status and codes to report it by.

Raised anywhere below a route; the route renders it in its protocol's envelope
(OpenAI or Anthropic), so the same failure reads naturally to either kind of client.
"""

from __future__ import annotations

from typing import Any

# OpenAI error type per HTTP status, and Anthropic's for the same status.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """An error with an HTTP status, a message that names what was wrong, and protocol codes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.retry_after = retry_after
        self.extras = extras or {}

    @property
    def openai_type(self) -> str:
        return self.type or OPENAI_TYPES.get(self.status, "api_error")

    @property
    def anthropic_type(self) -> str:
        return ANTHROPIC_TYPES.get(self.status, "api_error")

    def openai_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.openai_type,
            "code": self.code,
            "param": self.param,
        }
        body.update(self.extras)
        return {"error": body}

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}
