"""The one proxy flow every inference protocol goes through.

A protocol is an `Adapter`: it parses the client's body into an `Exchange` (the
resolved model, the body to send the neuron and where), turns the neuron's answer
into the client's protocol (whole, or event by event) and says how a failure reads
in that protocol. Everything else happens here, once, for every protocol:

- **lease**: routing returns a lease on a replica (counted in flight, so it cannot
  be evicted); the `Upstream` holds it until the answer is finished or abandoned;
- **keepalive**: a stream whose model is still loading gets the adapter's
  keep-alive frame every ``[lifecycle] keepalive_s``; a stream whose replica is ready
  waits for the neuron's own answer head instead, so that a refusal (429 when the
  neuron is at capacity) is still a real HTTP status and never a 200 cut short;
- **refusal**: a neuron's non-200 is the client's error, with the neuron's status,
  words and ``Retry-After`` (a real HTTP status while headers are unsent, an
  in-protocol error event after);
- **failover**: a neuron that cannot be reached is marked down and the request is
  routed once more (to another replica, or a fresh load elsewhere);
- **disconnect**: a client that leaves, while its model loads, while the neuron
  thinks, or mid-stream, closes the upstream at once, so the neuron aborts;
- **metering**: duration, time to first token, tokens and usage per model, node,
  route and status.

Adding a protocol is writing one adapter module (see `passthrough` and
`anthropic`) and one line in `routes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

import msgspec

from helexa.asgi import ClientGone, Receive, Send, read_body, send_bytes, stream, until_disconnect
from helexa.errors import ApiError
from helexa.gateway.meter import Meter
from helexa.gateway.upstream import Unreachable, Upstream, UpstreamBroken

if TYPE_CHECKING:
    from helexa.gateway.app import Gateway

log = logging.getLogger("helexa.gateway")

QUICK_S = 0.5
"""How long a stream waits for routing before it sends its headers and starts keep-alives."""


class Exchange(Protocol):
    """One request, as its protocol adapter sees it."""

    model_id: str
    """The resolved model id (aliases applied)."""
    stream: bool
    upstream_path: str
    """The neuron route to send ``upstream_body`` to."""
    upstream_body: bytes
    keepalive: bytes
    """The frame sent while the model loads (an SSE comment, or the protocol's ping)."""
    stream_headers: list[tuple[bytes, bytes]]

    def answer(self, content: bytes, meter: Meter) -> tuple[bytes, bytes]:
        """The client's body and content type for the neuron's whole 200 answer; meters usage."""
        ...

    def events(self, upstream: AsyncIterator[bytes], meter: Meter) -> AsyncIterator[bytes]:
        """The client's stream frames for the neuron's SSE events; notes tokens and usage."""
        ...

    def stream_error(self, error: ApiError) -> bytes:
        """How a failure after the headers were sent ends the stream in this protocol."""
        ...

    def refused(self, error: ApiError) -> ApiError:
        """The neuron's refusal as this protocol's clients expect it worded."""
        ...


class Adapter(Protocol):
    route: ClassVar[str]
    """The client-facing path (also the ``route`` label of the metrics)."""
    anthropic: ClassVar[bool]
    """Errors in Anthropic's envelope (else OpenAI's)."""

    @classmethod
    def parse(cls, body: bytes, resolve: Callable[[str], str]) -> Exchange:
        """Check the body (a 400 that names what is wrong) and make the exchange."""
        ...


async def serve(gateway: Gateway, adapter: type[Adapter], receive: Receive, send: Send) -> None:
    body = await read_body(receive, gateway.max_body, gateway.settings.http.body_timeout_s)
    exchange = adapter.parse(body, gateway.lifecycle.resolve)
    meter = Meter(exchange.model_id, adapter.route)
    if exchange.stream:
        await _streamed(gateway, exchange, meter, receive, send)
    else:
        await _whole(gateway, exchange, meter, receive, send)


async def connect(
    gateway: Gateway, exchange: Exchange, meter: Meter, routed: asyncio.Event | None = None
) -> Upstream:
    """Route (loading if needed) and send the request; returns once the neuron's answer has a head.
    ``routed`` is set once a replica is leased (no load to wait for any more)."""
    for attempt in (1, 2):
        lease = await gateway.lifecycle.route(exchange.model_id, exchange.upstream_path)
        if routed is not None:
            routed.set()
        upstream = gateway.upstream(lease)
        meter.node = upstream.node.name
        try:
            await upstream.open(exchange.upstream_path, exchange.upstream_body)
        except Unreachable:
            if attempt == 2:
                raise
            continue  # that neuron is marked down now: routing finds another replica, or loads one
        except BaseException:
            await upstream.close()
            raise
        return upstream
    raise AssertionError("unreachable")


async def _whole(gateway: Gateway, exchange: Exchange, meter: Meter, receive: Receive, send: Send) -> None:
    """A non-streaming answer. The client is watched the whole time: if it leaves, the upstream closes."""
    status = "client_gone"
    try:
        upstream = await until_disconnect(receive, connect(gateway, exchange, meter))
        try:
            if upstream.status != 200:
                error = exchange.refused(await until_disconnect(receive, upstream.refusal()))
                status = str(error.status)
                raise error
            content = await until_disconnect(receive, upstream.read())
        finally:
            await upstream.close()
        try:
            body, content_type = exchange.answer(content, meter)
        except msgspec.DecodeError as exc:
            raise ApiError(
                502,
                f"neuron {meter.node!r} answered with a body that is not valid JSON: {exc}",
                code="upstream_failed",
            ) from None
        status = "200"
    except ApiError as error:
        status = str(error.status)
        raise
    finally:
        meter.record(gateway.metrics, status)
    await send_bytes(send, 200, body, content_type)


async def _streamed(gateway: Gateway, exchange: Exchange, meter: Meter, receive: Receive, send: Send) -> None:
    routed = asyncio.Event()
    routing = asyncio.ensure_future(connect(gateway, exchange, meter, routed))
    await asyncio.wait({routing}, timeout=QUICK_S)
    if not routing.done() and routed.is_set():
        # No load to keep the client company through: the neuron is admitting or queueing the request.
        # Its head decides the client's status (a 429 stays a 429), so wait for it, watching the client.
        try:
            await until_disconnect(receive, asyncio.wait({routing}))
        except ClientGone:
            _abandon(routing)
            meter.record(gateway.metrics, "client_gone")
            raise
    upstream: Upstream | None = None
    if routing.done():  # errors this early still get a real HTTP status
        try:
            upstream = routing.result()
            if upstream.status != 200:
                error = exchange.refused(await upstream.refusal())
                await upstream.close()
                raise error
        except ApiError as error:
            meter.record(gateway.metrics, str(error.status))
            raise
    completed = await stream(
        receive, send, _frames(gateway, exchange, meter, routing), 200, exchange.stream_headers
    )
    meter.record(gateway.metrics, "200" if completed else "client_gone")


async def _frames(
    gateway: Gateway, exchange: Exchange, meter: Meter, routing: asyncio.Future[Upstream]
) -> AsyncIterator[bytes]:
    upstream = None
    try:
        while not routing.done():  # the model is loading: keep the client's connection alive meanwhile
            yield exchange.keepalive
            await asyncio.wait({routing}, timeout=gateway.settings.lifecycle.keepalive_s)
        upstream = routing.result()
        if upstream.status != 200:
            raise exchange.refused(await upstream.refusal())
        async for frame in exchange.events(upstream.events(), meter):
            yield frame
    except ApiError as error:
        yield exchange.stream_error(error)
    except UpstreamBroken as broken:
        yield exchange.stream_error(ApiError(502, str(broken), code="upstream_failed"))
    except msgspec.DecodeError as exc:
        message = f"neuron {meter.node!r} sent an event that is not valid JSON: {exc}"
        yield exchange.stream_error(ApiError(502, message, code="upstream_failed"))
    except Exception as exc:  # a bug must still end the stream in-protocol, not cut it
        log.exception("a stream of %s failed", meter.route)
        yield exchange.stream_error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        if upstream is not None:
            await upstream.close()
        else:
            _abandon(routing)


def _abandon(routing: asyncio.Future[Upstream]) -> None:
    """Nobody will read this routing's answer: stop it, and close what it opened if it already had."""
    if not routing.done():
        routing.cancel()  # a load in progress goes on for other requests; only this wait ends
        return
    if not routing.cancelled() and routing.exception() is None:
        routing.result().discard()
