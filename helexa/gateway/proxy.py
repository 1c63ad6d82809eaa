"""Streaming a request to a neuron and its answer back, untouched and unbuffered, while metering it.

Only ``model``, ``stream`` and ``stream_options`` are decoded from the request body;
the rest travels as raw JSON. Answer bytes go back as they arrive: SSE events are
cut at their boundaries only so the gateway can see the usage event (and remove it
when it asked for usage on the client's behalf) and notice the first token. A
client that disconnects closes the upstream request at once; a neuron that fails
mid-stream ends the client's stream with an in-protocol error, never a silent cut.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from helexa.errors import ApiError
from helexa.gateway.fleet import Lease
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neurons import NeuronClient
from helexa.gateway.transport import Answer

JSON_HEADERS = [(b"content-type", b"application/json")]
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
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


@dataclass
class Meter:
    """Timing and token counts of one request, recorded into the metrics when it ends."""

    model: str
    route: str
    started: float = field(default_factory=time.monotonic)
    node: str = ""
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def token(self) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now

    def usage(self, usage: dict[str, Any] | None) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
            self.completion_tokens = usage.get("completion_tokens", usage.get("output_tokens"))

    def record(self, metrics: GatewayMetrics, status: str) -> None:
        model, node = self.model, self.node or "-"
        metrics.requests.labels(model, node, self.route, status).inc()
        metrics.duration.labels(model, node, self.route).observe(time.monotonic() - self.started)
        if self.first_token is not None:
            metrics.ttft.labels(model, node, self.route).observe(self.first_token - self.started)
        if self.prompt_tokens:
            metrics.prompt_tokens.labels(model, node).inc(self.prompt_tokens)
        if self.completion_tokens:
            metrics.completion_tokens.labels(model, node).inc(self.completion_tokens)
            if self.first_token is not None and self.last_token is not None:
                window = self.last_token - self.first_token
                if window < 0.1:  # too short to mean much: measure from the start instead
                    window = self.last_token - self.started
                if window > 0:
                    metrics.tokens_per_second.labels(model, node).observe(self.completion_tokens / window)


class Upstream:
    """One proxied request on a neuron: open it, then read its body or its SSE events."""

    def __init__(
        self,
        client: NeuronClient,
        lease: Lease,
        metrics: GatewayMetrics,
        stall_timeout_s: float,
        first_byte_timeout_s: float,
    ) -> None:
        lease.taken = True
        self.client = client
        self.lease = lease
        self.fleet = lease.fleet
        self.node = lease.node
        self.replica = lease.replica
        self.metrics = metrics
        self.stall = stall_timeout_s
        self.first_byte = first_byte_timeout_s
        self.answer: Answer | None = None

    @property
    def status(self) -> int:
        assert self.answer is not None
        return self.answer.status

    async def open(self, path: str, body: bytes) -> Answer:
        self.metrics.in_flight.labels(self.replica.model_id, self.node.name).inc()
        try:
            async with asyncio.timeout(self.first_byte):
                self.answer = await self.client.lean.request(
                    self.client.address,
                    b"POST",
                    path.encode(),
                    JSON_HEADERS,
                    body,
                    self.client.connect_timeout,
                    self.first_byte,
                )
        except (TimeoutError, httpx.TimeoutException):
            await self.close()
            raise ApiError(
                504,
                f"neuron {self.node.name!r} sent nothing for {self.first_byte:.0f} s",
                code="upstream_timeout",
            ) from None
        except httpx.HTTPError as exc:
            await self.close()
            self.fleet.suspect(self.node.name, str(exc))
            raise ApiError(
                502,
                f"neuron {self.node.name!r} is unreachable: {type(exc).__name__}: {exc}",
                code="upstream_unreachable",
            ) from None
        self.answer.read_timeout = self.stall
        return self.answer

    def headers(self) -> list[tuple[bytes, bytes]]:
        assert self.answer is not None
        return [(k, v) for k, v in self.answer.headers if k.lower() not in HOP_BY_HOP]

    async def read(self) -> bytes:
        assert self.answer is not None
        try:
            return await self.answer.read()
        except httpx.HTTPError as exc:
            self.fleet.suspect(self.node.name, str(exc))
            raise ApiError(
                502,
                f"neuron {self.node.name!r} failed while answering: {type(exc).__name__}",
                code="upstream_failed",
            ) from None

    async def events(self) -> AsyncIterator[bytes]:
        """Complete SSE events (each ending in a blank line) as they arrive."""
        assert self.answer is not None
        pending = b""
        try:
            async for chunk in self.answer.chunks():
                pending += chunk
                while True:
                    cut = pending.find(b"\n\n")
                    if cut < 0:
                        break
                    yield pending[: cut + 2]
                    pending = pending[cut + 2 :]
        except httpx.ReadTimeout:
            raise UpstreamBroken(f"neuron {self.node.name!r} stalled for {self.stall:.0f} s") from None
        except httpx.HTTPError as exc:
            self.fleet.suspect(self.node.name, str(exc))
            raise UpstreamBroken(
                f"neuron {self.node.name!r} failed mid-stream: {type(exc).__name__}"
            ) from None
        if pending.strip():
            yield pending + b"\n\n"

    async def close(self) -> None:
        if self.answer is not None:
            await self.answer.aclose()
            self.answer = None
        if not self.lease.released:
            self.lease.release()
            self.metrics.in_flight.labels(self.replica.model_id, self.node.name).dec()


class UpstreamBroken(Exception):
    """The neuron's stream broke after the answer had started."""


def event_data(event: bytes) -> bytes | None:
    """The payload of a ``data:`` SSE event (None for comments and other lines)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


async def openai_events(upstream: Upstream, meter: Meter, strip_usage: bool) -> AsyncIterator[bytes]:
    """The neuron's OpenAI SSE events, passed through, noting tokens and usage on the way."""
    async for event in upstream.events():
        if TOKEN.search(event):
            meter.token()
        if USAGE.search(event):
            data = event_data(event)
            payload = msgspec.json.decode(data) if data and data.startswith(b"{") else {}
            meter.usage(payload.get("usage"))
            if strip_usage and not payload.get("choices"):
                continue  # the gateway asked for this one on the client's behalf
        yield event


def openai_error_event(error: ApiError) -> bytes:
    return b"data: " + msgspec.json.encode(error.openai_body()) + b"\n\ndata: [DONE]\n\n"
