"""Runs ASGI apps on uvicorn listeners in one event loop until SIGTERM or SIGINT.

One runner serves one role or several (standalone: gateway, metrics and neuron).
uvicorn's own signal capture is replaced so a stop signal drains every listener
and the process exits 0, as systemd expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from helexa.connections import protocol
from helexa.settings import HttpSection

log = logging.getLogger("helexa.runner")


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals are the runner's job
        yield


@dataclass
class Listener:
    app: Any
    address: str
    """HOST:PORT, or a pre-bound socket when ``sock`` is set."""
    name: str
    sock: socket.socket | None = None
    lifespan: str = "on"
    http: HttpSection | None = None
    """Connection limits (default: `HttpSection`'s defaults)."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def make_server(listener: Listener, drain_s: float) -> Server:
    host, port = split_address(listener.address)
    limits = listener.http or HttpSection()
    config = uvicorn.Config(
        listener.app,
        host=host,
        port=port,
        lifespan=listener.lifespan,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(drain_s, 0.1),
        timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]
        loop="none",
        http=protocol(limits),
        ws="none",
    )
    return Server(config)


async def serve(listeners: list[Listener], drain_s: float = 10.0) -> None:
    """Serve until a stop signal; then drain in-flight requests (up to ``drain_s``) and stop."""
    servers = [make_server(listener, drain_s) for listener in listeners]
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        log.info(
            "%s received: draining in-flight requests (up to %.0f s), then stopping",
            signal.Signals(signum).name,
            drain_s,
        )
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    tasks = []
    for listener, server in zip(listeners, servers, strict=True):
        sockets = [listener.sock] if listener.sock is not None else None
        tasks.append(asyncio.create_task(server.serve(sockets=sockets), name=listener.name))
        log.info("%s listening on %s", listener.name, listener.address)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:  # one listener stopping (or failing to bind) stops the rest
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        failed = [s for s in servers if not s.started]
        if failed:
            raise SystemExit("could not start every listener (is a port already in use?)")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def run(listeners: list[Listener], drain_s: float = 10.0) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve(listeners, drain_s))
    else:
        uvloop.run(serve(listeners, drain_s))
    return 0
