"""Client connections that cannot hurt a server: header deadline, connection cap, idle timeout.

uvicorn closes idle keep-alive connections, but a connection that opens and sends
nothing (or trickles its headers a byte at a time) is held forever, and enough of
them use up the process's open files so that real clients are refused. Every
helexa listener therefore serves HTTP with `GuardedHttp`: uvicorn's httptools
protocol plus a deadline for a request's headers (armed when the connection opens
and again after each answer) and a cap on open connections. The request body has
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

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers are due in time too (keep-alive alone allows trickling)

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
