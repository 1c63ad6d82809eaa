"""Client connections that cannot hurt a server: header deadline, connection cap, idle timeout.

uvicorn closes idle keep-alive connections, but a connection that opens and sends
nothing (or trickles its headers a byte at a time) is held forever, and enough of
them use up the process's open files so that real clients are refused. Every
helexa listener therefore serves HTTP with `GuardedHttp`: uvicorn's httptools
protocol plus a deadline for a request's headers (armed when the connection opens,
and on a kept-alive connection when the next request's first byte arrives) and a cap
on open connections. Between requests uvicorn's keep-alive timeout alone applies, so
``keepalive_timeout_s`` means what it says; arming the header deadline at the end of
each answer instead would close idle keep-alive connections after
``header_timeout_s`` and race clients that reuse them (seen as resets by the soak). The request body has
its own deadline, enforced where the body is read (`helexa.asgi.read_body`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from helexa.settings import HttpSection


class GuardedHttp(HttpToolsProtocol):
    header_timeout_s: ClassVar[float] = HttpSection().header_timeout_s
    max_connections: ClassVar[int] = HttpSection().max_connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()  # refused before it costs anything more than the accept
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_deadline is None:
            self._arm()  # a later request on a kept-alive connection: its headers are due in time too

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol(settings: HttpSection) -> type[GuardedHttp]:
    """The protocol class for a listener with these limits."""
    return type(
        "GuardedHttp",
        (GuardedHttp,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections},
    )
