"""Helpers for testing helexa and its plugins against real servers on ephemeral ports.

``serve_app(app)`` runs any ASGI app (a neuron, a gateway) on uvicorn in a
background thread, bound to a free port on 127.0.0.1, and yields its base URL;
leaving the block stops it and runs its shutdown, exactly as a real process would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvloop

from helexa.runner import Listener, make_server


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    with contextlib.closing(free_socket()) as sock:
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(app: Any, drain_s: float = 1.0, lifespan: str = "on") -> Iterator[str]:
    sock = free_socket()
    port = sock.getsockname()[1]
    server = make_server(Listener(app, f"127.0.0.1:{port}", "test", sock, lifespan), drain_s)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            uvloop.run(server.serve(sockets=[sock]))  # the loop production uses
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=main, name=f"serve-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server did not start: {failure}")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def scrape(url: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample at ``url`` (0.0 when absent), matched by name and labels."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
