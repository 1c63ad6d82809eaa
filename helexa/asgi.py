"""Small ASGI helpers for the hot paths of gateway and neuron (inference and proxy routes).

These routes are plain ASGI handlers mounted in litestar: they read the body
themselves (with a size limit), answer with bytes that are already encoded, and
stream with a watcher on ``http.disconnect`` so a client that goes away stops the
work behind its stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec

from helexa.errors import ApiError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")

JSON = b"application/json"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


async def read_body(receive: Receive, limit: int, timeout: float | None = None) -> bytes:
    """The whole request body, or a 413 once it passes ``limit`` bytes, or a 408 when it has not
    all arrived within ``timeout`` seconds (a client trickling its body cannot hold a slot forever)."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(receive, limit)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:.0f} s") from None


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than the {limit // (1024 * 1024)} MiB limit")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def decode(body: bytes, struct: type[T]) -> T:
    """Decode a request body, turning msgspec's complaint into a 400 that names the field."""
    try:
        return msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        field = where.rstrip("`").lstrip(".") or None
        detail = f"{field}: {message[0].lower()}{message[1:]}" if field else message
        raise ApiError(400, f"invalid request: {detail}", param=field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec recurses per level: a hostile body must not become a 500
        raise ApiError(400, "request body is nested too deeply") from None


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_bytes(send, status, msgspec.json.encode(payload), JSON, headers)


def envelope(error: ApiError, anthropic: bool) -> tuple[int, dict[str, Any]]:
    """Status and body of ``error`` in a protocol's envelope. Anthropic clients expect an overloaded
    service to answer 529 ``overloaded_error`` (their SDKs retry it), where OpenAI's expect 503."""
    if not anthropic:
        return error.status, error.openai_body()
    return (529 if error.status == 503 else error.status), error.anthropic_body()


async def send_error(send: Send, error: ApiError, anthropic: bool = False) -> None:
    status, body = envelope(error, anthropic)
    headers = [(k.encode(), v.encode()) for k, v in error.headers().items()]
    await send_json(send, status, body, headers)


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first, in which case it is cancelled."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone
    return task.result()


async def stream(
    receive: Receive,
    send: Send,
    chunks: AsyncIterator[bytes],
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = SSE_HEADERS,
) -> bool:
    """Send ``chunks`` as they come. Returns False if the client went away first.

    The iterator is always closed before this returns, so work behind it (a
    sequence on a neuron, an upstream request on the gateway) stops promptly.
    """
    me = asyncio.current_task()
    assert me is not None
    gone = False

    def on_disconnect(watch: asyncio.Future[None]) -> None:
        nonlocal gone
        if not watch.cancelled():
            gone = True
            me.cancel()

    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()
        return False
    except OSError:  # the transport is gone under us
        return False
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def error_response(request: Any, exc: Exception) -> Any:
    """litestar exception handler: every error in the protocol's envelope (Anthropic under /v1/messages)."""
    import logging

    from litestar import Response

    status = getattr(exc, "status_code", None)
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(status, int):  # litestar's HTTPException and friends
        detail = str(getattr(exc, "detail", "")) or "error"
        problems = getattr(exc, "extra", None)
        if status == 400 and isinstance(problems, list) and problems:  # litestar's body validation
            detail = "invalid request: " + "; ".join(
                f"{p.get('key') or 'body'}: {p.get('message')}" if isinstance(p, dict) else str(p)
                for p in problems
            )
        if status == 404:
            detail = f"no route {request.method} {request.url.path}"
        elif status == 405:
            detail = f"{request.url.path} does not take {request.method}"
        error = ApiError(status, detail)
    else:
        logging.getLogger("helexa").exception("unexpected error on %s", request.url.path)
        error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
    status, body = envelope(error, request.url.path.startswith("/v1/messages"))
    return Response(body, status_code=status, headers=error.headers())
