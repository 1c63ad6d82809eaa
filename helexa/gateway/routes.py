"""The gateway's inference routes: plain ASGI (no buffering, measured faster), one adapter each.

Each route checks the method and the API key, then hands its protocol adapter to
the one proxy pipeline (`helexa.gateway.pipeline`). Errors are answered in the
route's protocol envelope; a client that left is counted, not answered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar import asgi as asgi_route

from helexa.asgi import ClientGone, Receive, Scope, Send, read_body, send_error, send_json, until_disconnect
from helexa.errors import ApiError
from helexa.gateway import anthropic, passthrough, pipeline
from helexa.openapi import RawRoute
from helexa.wire import anthropic as wa
from helexa.wire import openai as oa

if TYPE_CHECKING:
    from helexa.gateway.service import Gateway

log = logging.getLogger("helexa.gateway")
Handler = Callable[["Gateway", Receive, Send], Awaitable[None]]

INFERENCE: list[tuple[RawRoute, type[pipeline.Adapter]]] = [
    (
        RawRoute("/v1/chat/completions", oa.ChatCompletionRequest, "OpenAI chat completions"),
        passthrough.ChatCompletions,
    ),
    (RawRoute("/v1/completions", oa.CompletionRequest, "OpenAI text completions"), passthrough.Completions),
    (RawRoute("/v1/responses", passthrough.ResponsesRequest, "OpenAI Responses"), passthrough.Responses),
    (RawRoute("/v1/messages", wa.MessagesRequest, "Anthropic Messages", anthropic=True), anthropic.Messages),
]
"""Every proxied protocol: its path and its adapter. A new protocol is one adapter and one line here."""


def route(path: str, handler: Handler, anthropic_envelope: bool) -> Any:
    """A POST route: method check, API keys, errors in the route's protocol envelope."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        gateway: Gateway = scope["app"].state.gateway
        try:
            if scope["method"] != "POST":
                raise ApiError(405, f"{path} takes POST, not {scope['method']}", type="invalid_request_error")
            gateway.keys.check(scope["headers"])
            await handler(gateway, receive, send)
        except ClientGone:
            gateway.metrics.errors.labels("", path, "client_gone").inc()
        except ApiError as error:
            gateway.metrics.errors.labels("", path, f"status_{error.status}").inc()
            await send_error(send, error, anthropic=anthropic_envelope)
        except Exception as exc:
            log.exception("%s failed", path)
            error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}")
            await send_error(send, error, anthropic=anthropic_envelope)

    endpoint.__name__ = endpoint.__qualname__ = "route_" + path.strip("/").replace("/", "_")
    return asgi_route(path, is_mount=False, copy_scope=False)(endpoint)


def proxied(adapter: type[pipeline.Adapter]) -> Handler:
    async def handler(gateway: Gateway, receive: Receive, send: Send) -> None:
        await pipeline.serve(gateway, adapter, receive, send)

    return handler


async def count_tokens(gateway: Gateway, receive: Receive, send: Send) -> None:
    body = await read_body(receive, gateway.max_body, gateway.settings.http.body_timeout_s)
    counted = await anthropic.count_tokens(gateway, body, lambda work: until_disconnect(receive, work))
    await send_json(send, 200, counted)


COUNT_TOKENS = RawRoute(
    "/v1/messages/count_tokens", wa.CountTokensRequest, "Anthropic token count", anthropic=True, streams=False
)
DESCRIBED = [raw for raw, _ in INFERENCE] + [COUNT_TOKENS]
"""The raw routes, as ``/openapi.json`` describes them."""

ROUTES = [route(raw.path, proxied(adapter), raw.anthropic) for raw, adapter in INFERENCE] + [
    route(COUNT_TOKENS.path, count_tokens, anthropic_envelope=True)
]
