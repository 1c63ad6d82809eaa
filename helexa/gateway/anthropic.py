"""Anthropic Messages on the gateway: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Requests are translated to OpenAI chat completions for the neurons and answers
translated back (whole, or event by event through `helexa.translate.stream`).
Errors use Anthropic's envelope; keys come as ``x-api-key`` or ``Authorization:
Bearer``; ``anthropic-version`` and ``anthropic-beta`` headers are accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from helexa.asgi import (
    SSE_HEADERS,
    Receive,
    Scope,
    Send,
    decode,
    read_body,
    send_json,
    stream,
    until_disconnect,
)
from helexa.errors import ApiError
from helexa.gateway.proxy import TOKEN, Meter, UpstreamBroken, event_data
from helexa.gateway.routes import abandon, keepalives, neuron_refusal, route, routed
from helexa.translate import request as treq
from helexa.translate.response import context_limit_message, to_anthropic
from helexa.translate.stream import Event, StreamTranslator
from helexa.wire.anthropic import CountTokensRequest, MessagesRequest

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
CHAT = "/v1/chat/completions"


DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
    "signature_delta": "signature",
}
DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def sse(event: Event) -> bytes:
    name, data = event
    if name == "content_block_delta":  # most of a stream: spell it out instead of encoding nested dicts
        delta = data["delta"]
        kind = delta["type"]
        field = DELTA_FIELDS[kind]
        return (
            DELTA_HEAD
            + str(data["index"]).encode()
            + b',"delta":{"type":"'
            + kind.encode()
            + b'","'
            + field.encode()
            + b'":'
            + msgspec.json.encode(delta[field])
            + b"}}\n\n"
        )
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def frames(events: list[Event]) -> bytes:
    """The events one upstream chunk produced, as one write to the client."""
    return b"".join(sse(event) for event in events)


def error_kind(error: ApiError) -> str:
    return error.anthropic_type


def anthropic_refusal(node: str, status: int, content: bytes) -> ApiError:
    """A neuron's refusal, with context-limit errors worded as Anthropic's (clients retry on them)."""
    error = neuron_refusal(node, status, content)
    try:
        detail = msgspec.json.decode(content).get("error")
    except (msgspec.DecodeError, AttributeError):
        detail = None
    message = context_limit_message(detail) if isinstance(detail, dict) else None
    if message is not None:
        error.message = message
    return error


@route("/v1/messages", anthropic=True)
async def messages(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    request = decode(await read_body(receive, gateway.max_body), MessagesRequest)
    model_id = gateway.lifecycle.resolve(request.model)
    body = msgspec.json.encode(treq.to_openai(request, model_id))
    meter = Meter(model_id, "/v1/messages")
    task, quick = await routed(gateway, model_id, receive, request.stream)
    if not request.stream:
        upstream = gateway.upstream(task.result())
        node = upstream.node
        meter.node = node.name
        response = await upstream.open(CHAT, body)
        try:
            content = await until_disconnect(receive, upstream.read())
        finally:
            await upstream.close()
        if response.status != 200:
            meter.record(gateway.metrics, str(response.status))
            raise anthropic_refusal(node.name, response.status, content)
        completion = msgspec.json.decode(content)
        meter.usage(completion.get("usage"))
        meter.token()
        meter.record(gateway.metrics, "200")
        await send_json(send, 200, to_anthropic(completion, request.model, request.stop_sequences))
        return
    translator = StreamTranslator(request.model, request.stop_sequences)
    upstream = None
    if quick:  # errors that come this early still get a real HTTP status
        upstream = gateway.upstream(task.result())
        meter.node = upstream.node.name
        response = await upstream.open(CHAT, body)
        if response.status != 200:
            content = await upstream.read()
            await upstream.close()
            raise anthropic_refusal(upstream.node.name, response.status, content)

    async def events() -> AsyncIterator[bytes]:
        nonlocal upstream
        try:
            if upstream is None:
                async for frame in keepalives(gateway, task, PING):
                    yield frame
                upstream = gateway.upstream(task.result())
                meter.node = upstream.node.name
                response = await upstream.open(CHAT, body)
                if response.status != 200:
                    raise anthropic_refusal(upstream.node.name, response.status, await upstream.read())
            async for raw in upstream.events():
                data = event_data(raw)
                if data is None or data == b"[DONE]":
                    continue
                chunk = msgspec.json.decode(data)
                if "error" in chunk:
                    error = (
                        chunk["error"]
                        if isinstance(chunk["error"], dict)
                        else {"message": str(chunk["error"])}
                    )
                    yield frames(translator.error("api_error", str(error.get("message", "upstream error"))))
                    return
                if TOKEN.search(raw):
                    meter.token()
                out = translator.feed(chunk)
                if out:
                    yield frames(out)
            yield frames(translator.finish())
            meter.usage(translator.usage)
        except ApiError as error:
            yield frames(translator.start() + translator.error(error_kind(error), error.message))
        except UpstreamBroken as broken:
            yield frames(translator.start() + translator.error("api_error", str(broken)))
        finally:
            if upstream is not None:
                await upstream.close()
            else:
                abandon(task)

    completed = await stream(receive, send, events(), 200, SSE_HEADERS)
    meter.record(gateway.metrics, "200" if completed else "client_gone")


@route("/v1/messages/count_tokens", anthropic=True)
async def count_tokens(gateway: Any, scope: Scope, receive: Receive, send: Send) -> None:
    request = decode(await read_body(receive, gateway.max_body), CountTokensRequest)
    model_id = gateway.lifecycle.resolve(request.model)
    body: dict[str, Any] = {
        "model": model_id,
        "messages": treq.chat_messages(request.system, request.messages),
    }
    tools = treq.tools(request.tools)
    if tools:
        body["tools"] = tools
    kwargs = treq.thinking_kwargs(request.thinking)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    lease = await until_disconnect(receive, gateway.lifecycle.route(model_id))
    try:
        counted = await gateway.clients[lease.node.name].tokenize(body)
    finally:
        lease.release()
    await send_json(send, 200, {"input_tokens": counted["count"]})


ANTHROPIC_ROUTES = [messages, count_tokens]
