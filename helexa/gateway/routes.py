"""HTTP routes of the gateway. Inference routes are plain ASGI (no buffering); the rest is small JSON."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import asgi as asgi_route

from helexa.asgi import (
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    decode,
    read_body,
    send_bytes,
    send_error,
    send_json,
    stream,
    until_disconnect,
)
from helexa.buildinfo import build_info
from helexa.errors import ApiError
from helexa.gateway import views
from helexa.gateway.proxy import (
    Meter,
    Upstream,
    UpstreamBroken,
    openai_error_event,
    openai_events,
    read_head,
    rewrite,
)

log = logging.getLogger("helexa.gateway")
Handler = Callable[[Any, Scope, Receive, Send], Awaitable[None]]


def route(
    path: str, method: str = "POST", admin: bool = False, keys: bool = True, anthropic: bool = False
) -> Callable[[Handler], Any]:
    """A gateway route: method check, API keys, errors in the route's protocol envelope."""

    def wrap(handler: Handler) -> Any:
        @functools.wraps(handler)
        async def endpoint(scope: Any, receive: Any, send: Any) -> None:
            gateway = scope["app"].state.gateway
            try:
                if scope["method"] != method:
                    raise ApiError(405, f"{path} takes {method}, not {scope['method']}")
                if keys:
                    gateway.keys.check(scope["headers"], admin=admin)
                await handler(gateway, scope, receive, send)
            except ClientGone:
                gateway.metrics.errors.labels("", path, "client_gone").inc()
            except ApiError as error:
                gateway.metrics.errors.labels("", path, f"status_{error.status}").inc()
                await send_error(send, error, anthropic=anthropic)
            except Exception as exc:
                log.exception("%s failed", path)
                await send_error(
                    send, ApiError(500, f"internal error: {type(exc).__name__}: {exc}"), anthropic=anthropic
                )

        return asgi_route(path, is_mount=False, copy_scope=False)(endpoint)

    return wrap


async def read_json(gateway: Any, receive: Receive, kind: type) -> Any:
    return decode(await read_body(receive, gateway.max_body), kind)


# --- OpenAI proxy ------------------------------------------------------------------


async def routed(gateway: Any, model_id: str, receive: Receive, streaming: bool) -> tuple[asyncio.Task, bool]:
    """Start routing; returns the task and whether it finished quickly enough to answer with a real status."""
    task = asyncio.ensure_future(gateway.lifecycle.route(model_id))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # consumed below, or by nobody
    if not streaming:
        try:
            await until_disconnect(receive, asyncio.shield(task))
        except ClientGone:
            abandon(task)
            raise
        return task, True
    await asyncio.wait({task}, timeout=0.5)
    return task, task.done()


def abandon(task: asyncio.Task) -> None:
    """Nobody will use this routing's lease: give it back (now, or when routing finishes)."""

    def give_back(done: asyncio.Task) -> None:
        if not done.cancelled() and done.exception() is None and not done.result().taken:
            done.result().release()

    if task.done():
        give_back(task)
    else:
        task.add_done_callback(give_back)


async def keepalives(gateway: Any, task: asyncio.Task, comment: bytes) -> AsyncIterator[bytes]:
    """Keep-alive frames while a model loads, so clients and proxies keep the stream open."""
    while not task.done():
        yield comment
        await asyncio.wait({task}, timeout=gateway.settings.lifecycle.keepalive_s)


async def openai_proxy(gateway: Any, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    body = await read_body(receive, gateway.max_body)
    head = read_head(body)
    model_id = gateway.lifecycle.resolve(head.model)
    meter = Meter(model_id, path)
    chat_like = path in ("/v1/chat/completions", "/v1/completions")
    inject = head.stream and chat_like and not head.wants_usage
    if model_id != head.model or inject:
        body = rewrite(body, model_id if model_id != head.model else None, inject)
    task, quick = await routed(gateway, model_id, receive, head.stream)
    if quick:
        upstream = gateway.upstream(task.result())
        response = await upstream.open(path, body)
        meter.node = upstream.node.name
        if not head.stream or response.status != 200:
            await whole_answer(gateway, upstream, receive, send, meter)
            return
        events = openai_events(upstream, meter, strip_usage=inject)
        completed = await stream(receive, send, guarded(upstream, events), 200, upstream.headers())
        meter.record(gateway.metrics, "200" if completed else "client_gone")
        return

    async def loading_then_answer() -> AsyncIterator[bytes]:
        upstream = None
        try:
            async for frame in keepalives(gateway, task, f": loading {model_id}\n\n".encode()):
                yield frame
            upstream = gateway.upstream(task.result())
            response = await upstream.open(path, body)
            meter.node = upstream.node.name
            if response.status != 200:
                raise neuron_refusal(upstream.node.name, response.status, await upstream.read())
            async for event in openai_events(upstream, meter, strip_usage=inject):
                yield event
        except (ApiError, UpstreamBroken) as error:
            yield openai_error_event(error if isinstance(error, ApiError) else ApiError(502, str(error)))
        finally:
            if upstream is not None:
                await upstream.close()
            else:
                abandon(task)

    completed = await stream(receive, send, loading_then_answer(), 200, SSE_HEADERS)
    meter.record(gateway.metrics, "200" if completed else "client_gone")


async def guarded(upstream: Upstream, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Upstream events; a broken upstream ends the stream with an OpenAI error event."""
    try:
        async for event in events:
            yield event
    except UpstreamBroken as broken:
        yield openai_error_event(ApiError(502, str(broken), code="upstream_failed"))
    finally:
        await upstream.close()


def neuron_refusal(node: str, status: int, content: bytes) -> ApiError:
    try:
        error = msgspec.json.decode(content).get("error") or {}
    except (msgspec.DecodeError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    return ApiError(
        status,
        message or f"neuron {node!r} answered {status}",
        code=error.get("code") if isinstance(error, dict) else None,
    )


async def whole_answer(gateway: Any, upstream: Upstream, receive: Receive, send: Send, meter: Meter) -> None:
    """A non-streaming answer (or an error) passed through as the neuron gave it."""
    status = upstream.status
    content_type = upstream_content_type(upstream)
    try:
        content = await until_disconnect(receive, upstream.read())
    finally:
        await upstream.close()
    if status == 200:
        try:
            meter.usage(msgspec.json.decode(content).get("usage"))
        except (msgspec.DecodeError, AttributeError):
            pass
        meter.token()
    meter.record(gateway.metrics, str(status))
    await send_bytes(send, status, content, content_type)


def upstream_content_type(upstream: Upstream) -> bytes:
    for name, value in upstream.headers():
        if name.lower() == b"content-type":
            return value
    return b"application/json"


@route("/v1/chat/completions")
async def chat_completions(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await openai_proxy(gateway, scope, receive, send, "/v1/chat/completions")


@route("/v1/completions")
async def completions(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await openai_proxy(gateway, scope, receive, send, "/v1/completions")


@route("/v1/responses")
async def responses(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await openai_proxy(gateway, scope, receive, send, "/v1/responses")


@route("/v1/embeddings")
async def embeddings(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await openai_proxy(gateway, scope, receive, send, "/v1/embeddings")


# --- fleet views and admin ------------------------------------------------------------


@route("/v1/models", method="GET")
async def models(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, views.model_list(gateway.fleet, gateway.lifecycle))


@route("/health", method="GET", keys=False)
async def health(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, views.health(gateway.fleet))


@route("/version", method="GET", keys=False)
async def version(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, build_info("gateway"))


@route("/admin/fleet", method="GET", admin=True)
async def admin_fleet(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, views.fleet_view(gateway.fleet, gateway.lifecycle))


class AdminLoad(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None
    pinned: bool = False


class AdminUnload(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None


@route("/admin/models/load", admin=True)
async def admin_load(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    request = await read_json(gateway, receive, AdminLoad)
    node, replica = await gateway.lifecycle.admin_load(request.model, request.node, request.pinned)
    await send_json(
        send,
        200,
        {"status": "loaded", "model": replica.model_id, "node": node.name, "pinned": replica.pinned},
    )


@route("/admin/models/park", admin=True)
async def admin_park(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    request = await read_json(gateway, receive, AdminUnload)
    outcomes = await gateway.lifecycle.admin_park(request.model, request.node)
    await send_json(send, 200, {"model": gateway.lifecycle.resolve(request.model), "nodes": outcomes})


@route("/admin/models/unload", admin=True)
async def admin_unload(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    request = await read_json(gateway, receive, AdminUnload)
    nodes = await gateway.lifecycle.admin_unload(request.model, request.node)
    await send_json(
        send, 200, {"status": "unloaded", "model": gateway.lifecycle.resolve(request.model), "nodes": nodes}
    )


ROUTES = [
    chat_completions,
    completions,
    responses,
    embeddings,
    models,
    health,
    version,
    admin_fleet,
    admin_load,
    admin_unload,
    admin_park,
]
