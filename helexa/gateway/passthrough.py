"""Protocol adapters that pass the neuron's answer through untouched: OpenAI chat/completions and Responses.

Only ``model``, ``stream`` and ``stream_options`` are decoded from the request body;
the rest travels as raw JSON (the model is rewritten only when an alias was used).
Answer bytes go back as they arrive: SSE events are cut at their boundaries only so
the gateway can see the usage and notice the first token. On chat/completions streams
the gateway asks for usage on the client's behalf (and removes that event again when
the client did not ask), so every request is metered.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import msgspec

from helexa import sse
from helexa.asgi import JSON, SSE_HEADERS
from helexa.errors import ApiError
from helexa.gateway.meter import Meter

TOKEN = re.compile(rb'"(?:content|reasoning_content|text)":"[^"]|"tool_calls":\[')
USAGE = re.compile(rb'"usage":\s*\{')


class RequestHead(msgspec.Struct):
    """The only fields of a request body the gateway reads."""

    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


def read_head(body: bytes) -> RequestHead:
    try:
        head = msgspec.json.decode(body, type=RequestHead)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not head.model:
        raise ApiError(400, "the request has no 'model'; name one from GET /v1/models", param="model")
    return head


def rewrite(body: bytes, model: str | None = None, include_usage: bool = False) -> bytes:
    """Set ``model`` and/or ask for usage, re-encoding only the top level (nested JSON stays raw bytes)."""
    fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    if model is not None:
        fields["model"] = msgspec.Raw(msgspec.json.encode(model))
    if include_usage:
        fields["stream_options"] = msgspec.Raw(b'{"include_usage":true}')
    return msgspec.json.encode(fields)


def _usage_of(content: bytes) -> Any:
    """The usage of a whole answer (decoding it also proves it is JSON: the pipeline reports it if not)."""
    answer = msgspec.json.decode(content)
    return answer.get("usage") if isinstance(answer, dict) else None


class _Passthrough:
    """What every passthrough protocol shares: the neuron already speaks it, whole answers go back as
    they are (their usage metered), refusals keep the neuron's words."""

    stream_headers = SSE_HEADERS

    def answer(self, content: bytes, meter: Meter) -> tuple[bytes, bytes]:
        meter.usage(_usage_of(content))
        meter.token()
        return content, JSON

    def refused(self, error: ApiError) -> ApiError:
        return error


class OpenAIExchange(_Passthrough):
    def __init__(self, path: str, head: RequestHead, body: bytes, model_id: str, strip_usage: bool) -> None:
        self.upstream_path = path
        self.model_id = model_id
        self.stream = head.stream
        self.upstream_body = body
        self.strip_usage = strip_usage
        self.keepalive = sse.comment(f"loading {model_id}")

    async def events(self, upstream: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
        async for event in upstream:
            if TOKEN.search(event):
                meter.token()
            if USAGE.search(event):
                data = sse.event_data(event)
                payload = msgspec.json.decode(data) if data and data.startswith(b"{") else {}
                meter.usage(payload.get("usage"))
                if self.strip_usage and not payload.get("choices"):
                    continue  # the gateway asked for this one on the client's behalf
            yield event

    def stream_error(self, error: ApiError) -> bytes:
        return sse.json_frame(error.openai_body()) + sse.DONE


class _OpenAIRoute:
    route: ClassVar[str]
    anthropic: ClassVar[bool] = False

    @classmethod
    def parse(cls, body: bytes, resolve: Callable[[str], str]) -> OpenAIExchange:
        head = read_head(body)
        assert head.model is not None
        model_id = resolve(head.model)
        inject = head.stream and not head.wants_usage
        if model_id != head.model or inject:
            body = rewrite(body, model_id if model_id != head.model else None, inject)
        return OpenAIExchange(cls.route, head, body, model_id, strip_usage=inject)


class ChatCompletions(_OpenAIRoute):
    route = "/v1/chat/completions"


class Completions(_OpenAIRoute):
    route = "/v1/completions"


# --- Responses -------------------------------------------------------------------

RESPONSES_TOKEN = re.compile(
    rb'"type":\s*"response\.(?:output_text|reasoning_text|function_call_arguments)\.delta"'
)
COMPLETED = re.compile(rb'"type":\s*"response\.completed"')
SEQUENCE = re.compile(rb'"sequence_number":\s*(\d+)')


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """What the gateway reads of a Responses request; the neuron validates the rest."""

    model: str
    input: str | list[Any]
    stream: bool = False
    instructions: str | None = None
    max_output_tokens: int | None = None


class ResponsesExchange(_Passthrough):
    """OpenAI Responses, passed through: the neuron serves ``/v1/responses`` itself."""

    upstream_path = "/v1/responses"

    def __init__(self, head: RequestHead, body: bytes, model_id: str) -> None:
        self.model_id = model_id
        self.stream = head.stream
        self.upstream_body = body
        self.keepalive = sse.comment(f"loading {model_id}")
        self.sequence = -1
        self.response_id = ""

    async def events(self, upstream: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
        async for event in upstream:
            found = SEQUENCE.search(event)
            if found:
                self.sequence = int(found.group(1))
            if RESPONSES_TOKEN.search(event):
                meter.token()
            elif COMPLETED.search(event):
                data = sse.event_data(event)
                payload = msgspec.json.decode(data) if data and data.startswith(b"{") else {}
                response = payload.get("response") if isinstance(payload, dict) else None
                if isinstance(response, dict):
                    meter.usage(response.get("usage"))
            elif not self.response_id and b'"response.created"' in event:
                data = sse.event_data(event) or b"{}"
                response = msgspec.json.decode(data).get("response") or {}
                self.response_id = str(response.get("id") or "")
            yield event

    def stream_error(self, error: ApiError) -> bytes:
        self.sequence += 1
        failed = {
            "type": "response.failed",
            "sequence_number": self.sequence,
            "response": {
                "id": self.response_id or "resp_failed",
                "object": "response",
                "model": self.model_id,
                "status": "failed",
                "output": [],
                "error": {"code": "server_error", "message": error.message},
            },
        }
        return sse.json_frame(failed, "response.failed")


class Responses:
    route: ClassVar[str] = "/v1/responses"
    anthropic: ClassVar[bool] = False

    @classmethod
    def parse(cls, body: bytes, resolve: Callable[[str], str]) -> ResponsesExchange:
        head = read_head(body)
        assert head.model is not None
        model_id = resolve(head.model)
        if model_id != head.model:
            body = rewrite(body, model_id)
        return ResponsesExchange(head, body, model_id)
