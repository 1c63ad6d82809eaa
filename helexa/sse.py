"""Server-sent events: the one place that knows how an SSE frame is spelled.

Every stream helexa sends (OpenAI chunks, Anthropic events, Responses events,
keep-alive comments) is built here, and every stream it relays is cut into events
here, so the framing rules (``data:`` lines, an optional ``event:`` line, a blank
line to end each event) live in one module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

DONE = b"data: [DONE]\n\n"
"""The OpenAI terminator."""

_encode = msgspec.json.encode


def frame(data: bytes, event: str | None = None) -> bytes:
    """One event whose payload is already JSON-encoded."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def json_frame(payload: Any, event: str | None = None) -> bytes:
    """One event with ``payload`` encoded as JSON."""
    return frame(_encode(payload), event)


def comment(text: str) -> bytes:
    """A comment line: ignored by SSE parsers, but keeps idle connections and proxies open."""
    return b": " + text.encode() + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line (None for comments and events without data)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def event_name(event: bytes) -> bytes | None:
    """The name on an event's ``event:`` line, if it has one."""
    if event.startswith(b"event:"):
        return event[6 : event.find(b"\n")].strip()
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return None


async def split_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete events (each ending in its blank line) from a byte stream cut anywhere."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        while True:
            cut = pending.find(b"\n\n")
            if cut < 0:
                break
            yield pending[: cut + 2]
            pending = pending[cut + 2 :]
    if pending.strip():
        yield pending + b"\n\n"
