"""The Anthropic Messages adapter: ``POST /v1/messages`` translated to OpenAI chat for the neurons.

Requests are translated to OpenAI chat completions and answers translated back,
whole or event by event through `helexa.translate.stream`. Errors use Anthropic's
envelope (overload is ``529 overloaded_error``, which the SDKs retry); keys come
as ``x-api-key`` or ``Authorization: Bearer``. ``count_tokens`` asks the neuron
that holds the model to count the templated prompt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from helexa import sse
from helexa.asgi import JSON, SSE_HEADERS, decode
from helexa.errors import ApiError
from helexa.gateway.meter import Meter
from helexa.gateway.passthrough import TOKEN
from helexa.translate import request as treq
from helexa.translate.response import context_limit_message, to_anthropic
from helexa.translate.stream import Event, StreamTranslator
from helexa.wire.anthropic import CountTokensRequest, MessagesRequest

if TYPE_CHECKING:
    from helexa.gateway.app import Gateway

DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
    "signature_delta": "signature",
}
PING = sse.json_frame({"type": "ping"}, "ping")
DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def encode(event: Event) -> bytes:
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
    return sse.json_frame(data, name)


def frames(events: list[Event]) -> bytes:
    """The events one upstream chunk produced, as one write to the client."""
    return b"".join(encode(event) for event in events)


def translated(build: Callable[[], Any]) -> Any:
    """Run a translation of client input; a shape the translator did not expect is the client's 400."""
    try:
        return build()
    except ApiError:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:
        raise ApiError(400, f"invalid request: a content block or tool has the wrong shape ({exc})") from None


class MessagesExchange:
    upstream_path = "/v1/chat/completions"
    keepalive = PING
    stream_headers = SSE_HEADERS

    def __init__(self, request: MessagesRequest, model_id: str) -> None:
        self.request = request
        self.model_id = model_id
        self.stream = request.stream
        body = translated(lambda: treq.to_openai(request, model_id))
        self.upstream_body = msgspec.json.encode(body)
        self.translator = StreamTranslator(request.model, request.stop_sequences)

    def answer(self, content: bytes, meter: Meter) -> tuple[bytes, bytes]:
        completion = msgspec.json.decode(content)
        meter.usage(completion.get("usage"))
        meter.token()
        message = to_anthropic(completion, self.request.model, self.request.stop_sequences)
        return msgspec.json.encode(message), JSON

    async def events(self, upstream: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
        translator = self.translator
        async for raw in upstream:
            data = sse.event_data(raw)
            if data is None or data == b"[DONE]":
                continue
            chunk = msgspec.json.decode(data)
            if "error" in chunk:  # the neuron ended its stream with an error: say it Anthropic's way
                error = (
                    chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
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

    def refused(self, error: ApiError) -> ApiError:
        """Context-limit refusals in Anthropic's words (clients parse them to retry with less)."""
        message = context_limit_message({"code": error.code, **error.extras})
        if message is not None:
            error.message = message
        return error

    def stream_error(self, error: ApiError) -> bytes:
        kind = "overloaded_error" if error.status in (429, 503, 529) else error.anthropic_type
        return frames(self.translator.start() + self.translator.error(kind, error.message))


class Messages:
    route: ClassVar[str] = "/v1/messages"
    anthropic: ClassVar[bool] = True

    @classmethod
    def parse(cls, body: bytes, resolve: Callable[[str], str]) -> MessagesExchange:
        request = decode(body, MessagesRequest)
        return MessagesExchange(request, resolve(request.model))


async def count_tokens(gateway: Gateway, body: bytes, watch: Callable[[Any], Any]) -> dict[str, int]:
    """``/v1/messages/count_tokens``: the templated prompt counted by a neuron that holds the model."""
    request = decode(body, CountTokensRequest)
    model_id = gateway.lifecycle.resolve(request.model)
    openai: dict[str, Any] = {
        "model": model_id,
        "messages": translated(lambda: treq.chat_messages(request.system, request.messages)),
    }
    tools = translated(lambda: treq.tools(request.tools))
    if tools:
        openai["tools"] = tools
    kwargs = translated(lambda: treq.thinking_kwargs(request.thinking))
    if kwargs:
        openai["chat_template_kwargs"] = kwargs
    lease = await watch(gateway.lifecycle.route(model_id, "/v1/tokenize"))
    try:
        counted = await gateway.clients[lease.node.name].tokenize(openai)
    finally:
        lease.release()
    return {"input_tokens": counted["count"]}
