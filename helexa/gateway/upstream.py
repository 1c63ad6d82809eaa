"""One proxied request on a neuron: open it, then read its whole body or its SSE events.

An `Upstream` holds the request's lease on the replica from the moment it is
created until `close`, so the replica counts the request in flight (and cannot be
evicted) for exactly as long as bytes may still flow. Failures are said in the
client's terms: a neuron that cannot be reached is `Unreachable` (the pipeline may
try another), one that breaks after answering raises `UpstreamBroken`, and a
refusal keeps the neuron's own status, message, code and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec

from helexa import sse
from helexa.errors import ApiError
from helexa.gateway.fleet import Lease
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neurons import NeuronClient
from helexa.gateway.transport import Answer

JSON_HEADERS = [(b"content-type", b"application/json")]
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}


class UpstreamBroken(Exception):
    """The neuron's answer broke after it had started."""


class Unreachable(ApiError):
    """The neuron could not be reached at all: nothing was sent, so another replica may be tried."""


class Upstream:
    def __init__(
        self,
        client: NeuronClient,
        lease: Lease,
        metrics: GatewayMetrics,
        stall_timeout_s: float,
        first_byte_timeout_s: float,
    ) -> None:
        self.client = client
        self.lease = lease
        self.fleet = lease.fleet
        self.node = lease.node
        self.replica = lease.replica
        self.metrics = metrics
        self.stall = stall_timeout_s
        self.first_byte = first_byte_timeout_s
        self.answer: Answer | None = None
        self.metrics.in_flight.labels(self.replica.model_id, self.node.name).inc()

    @property
    def status(self) -> int:
        assert self.answer is not None
        return self.answer.status

    async def open(self, path: str, body: bytes) -> int:
        """Send the request; returns the answer's status once its head has arrived."""
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
        except httpx.ConnectError as exc:
            await self.close()
            self.fleet.mark_down(self.node.name, str(exc))
            raise Unreachable(
                502, f"neuron {self.node.name!r} is unreachable: {exc}", code="upstream_unreachable"
            ) from None
        except httpx.HTTPError as exc:
            await self.close()
            self.fleet.suspect(self.node.name, str(exc))
            raise ApiError(
                502,
                f"neuron {self.node.name!r} closed the connection before answering: {exc}",
                code="upstream_failed",
            ) from None
        self.answer.read_timeout = self.stall
        return self.answer.status

    def headers(self) -> list[tuple[bytes, bytes]]:
        assert self.answer is not None
        return [(k, v) for k, v in self.answer.headers if k.lower() not in HOP_BY_HOP]

    def header(self, name: bytes) -> bytes | None:
        assert self.answer is not None
        for key, value in self.answer.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        """The whole body."""
        assert self.answer is not None
        try:
            return await self.answer.read()
        except httpx.ReadTimeout:
            raise ApiError(
                504, f"neuron {self.node.name!r} stalled for {self.stall:.0f} s", code="upstream_timeout"
            ) from None
        except httpx.HTTPError as exc:
            self.fleet.suspect(self.node.name, str(exc))
            raise ApiError(
                502,
                f"neuron {self.node.name!r} failed in the middle of its answer: {exc}",
                code="upstream_failed",
            ) from None

    async def refusal(self) -> ApiError:
        """A non-200 answer as the error to give the client: the neuron's words, status and Retry-After."""
        content = await self.read()
        try:
            error = msgspec.json.decode(content).get("error") or {}
        except (msgspec.DecodeError, AttributeError):
            error = {}
        if not isinstance(error, dict):
            error = {"message": str(error)}
        retry = self.header(b"retry-after")
        try:
            retry_after = float(retry) if retry is not None else None
        except ValueError:
            retry_after = None
        message = error.get("message")
        return ApiError(
            self.status,
            message if isinstance(message, str) else f"neuron {self.node.name!r} answered {self.status}",
            code=error.get("code") if isinstance(error.get("code"), str) else None,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            retry_after=retry_after,
            # What else the neuron said (context-limit counts, device memory): passed on, not lost.
            extras={k: v for k, v in error.items() if k not in ("message", "type", "code", "param")},
        )

    async def events(self) -> AsyncIterator[bytes]:
        """Complete SSE events as they arrive."""
        assert self.answer is not None
        try:
            async for event in sse.split_events(self.answer.chunks()):
                yield event
        except httpx.ReadTimeout:
            raise UpstreamBroken(f"neuron {self.node.name!r} stalled for {self.stall:.0f} s") from None
        except httpx.HTTPError as exc:
            self.fleet.suspect(self.node.name, str(exc))
            raise UpstreamBroken(f"neuron {self.node.name!r} failed mid-stream: {exc}") from None

    async def close(self) -> None:
        self.discard()

    def discard(self) -> None:
        """Give the connection back (or drop it, if unfinished: the neuron then aborts) and the lease."""
        if self.answer is not None:
            self.answer.close()
            self.answer = None
        if not self.lease.released:
            self.lease.release()
            self.metrics.in_flight.labels(self.replica.model_id, self.node.name).dec()
