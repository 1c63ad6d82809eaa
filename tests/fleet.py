"""A fleet for tests: echo neurons and a gateway in front of them, on ephemeral ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from neurons import neuron_settings

from helexa.gateway.app import Gateway, create_app
from helexa.gateway.metrics import metrics_app
from helexa.neuron.app import Neuron
from helexa.neuron.app import create_app as neuron_app
from helexa.settings import Catalogue, GatewaySettings
from helexa.testing import free_port, serve_app

SCRIPT = Path(__file__).with_name("scripted_neuron.py")


@dataclass
class Fleet:
    url: str
    gateway: Gateway
    metrics_url: str
    neurons: dict[str, tuple[str, Neuron]] = field(default_factory=dict)
    stoppers: dict[str, contextlib.ExitStack] = field(default_factory=dict)

    def kill(self, name: str) -> None:
        """Stop a neuron's server, as if its host went away."""
        self.stoppers.pop(name).close()

    def wait(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.02)

    def models_on(self, name: str) -> set[str]:
        return {
            m.spec.model_id for m in self.neurons[name][1].manager.entries.values() if m.status == "loaded"
        }


@contextlib.contextmanager
def running_fleet(
    neurons: dict[str, dict[str, Any]], catalogue: dict[str, Any] | None = None, **gateway: Any
) -> Iterator[Fleet]:
    """Neurons by name (each a dict of neuron.toml sections) and a gateway whose catalogue is given."""
    with contextlib.ExitStack() as stack:
        urls = {}
        services = {}
        stoppers = {}
        for name, sections in neurons.items():
            service = Neuron(neuron_settings(**sections))
            inner = contextlib.ExitStack()
            urls[name] = inner.enter_context(serve_app(neuron_app(service)))
            stack.callback(inner.close)
            services[name] = (urls[name], service)
            stoppers[name] = inner
        settings = gateway_settings(urls, **gateway)
        service = Gateway(settings, msgspec.convert(catalogue or {}, Catalogue))
        url = stack.enter_context(serve_app(create_app(service)))
        metrics = stack.enter_context(serve_app(metrics_app(service.metrics), lifespan="off"))
        fleet = Fleet(url, service, f"{metrics}/metrics", services, stoppers)
        fleet.wait(lambda: all(n.healthy for n in service.fleet.nodes.values()))
        yield fleet
        for stopper in fleet.stoppers.values():
            stopper.close()


def gateway_settings(urls: dict[str, str], **sections: Any) -> GatewaySettings:
    data: dict[str, Any] = {
        "gateway": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
        "poller": {"interval_s": 0.2, "timeout_s": 2},
        "eviction": {"min_residency_s": 0},
        "neurons": [{"name": n, "endpoint": u} for n, u in urls.items()],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return msgspec.convert(data, GatewaySettings)


@contextlib.contextmanager
def gateway_only(
    urls: dict[str, str], catalogue: dict[str, Any] | None = None, **sections: Any
) -> Iterator[Fleet]:
    """A gateway in front of neurons that run elsewhere (subprocesses)."""
    service = Gateway(gateway_settings(urls, **sections), msgspec.convert(catalogue or {}, Catalogue))
    with serve_app(create_app(service)) as url, serve_app(metrics_app(service.metrics), lifespan="off") as m:
        fleet = Fleet(url, service, f"{m}/metrics")
        fleet.wait(lambda: all(n.healthy for n in service.fleet.nodes.values()))
        yield fleet


def load(fleet: Fleet, neuron: str, model_id: str, **options: Any) -> None:
    url = fleet.neurons[neuron][0]
    httpx.post(
        f"{url}/models/load", json={"model_id": model_id, "options": options}, timeout=30
    ).raise_for_status()
    # Loaded, not just listed: a poll that began while the load ran may report it "loading".
    fleet.wait(lambda: bool(fleet.gateway.fleet.replicas(model_id)))


@contextlib.contextmanager
def scripted(count: int = 1, routes: list[str] | None = None) -> Iterator[list[tuple[subprocess.Popen, str]]]:
    """Misbehaving neurons (tests/scripted_neuron.py) in their own processes: (process, url) each."""
    started = []
    try:
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), str(port), *([",".join(routes)] if routes else [])],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
            started.append((process, f"http://127.0.0.1:{port}"))
        yield started
    finally:
        for process, _ in started:
            process.kill()
            process.wait()


@contextlib.contextmanager
def helexa_role(
    role: str, config: str, folder: Path, ready: str = "/health", timeout: float = 90, env: dict | None = None
) -> Iterator[str]:
    """``helexa --role ROLE --config FILE`` in its own process, as an operator runs it; yields its URL
    once ``GET ready`` answers 200. ``config`` is the TOML text; its first ``listen`` names the port."""
    path = folder / f"{role}-{free_port()}.toml"
    path.write_text(config)
    listen = next(line for line in config.splitlines() if line.strip().startswith("listen"))
    url = "http://" + listen.split("=", 1)[1].strip().strip('"')
    process = subprocess.Popen(
        [sys.executable, "-m", "helexa", "--role", role, "--config", str(path), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}{ready}", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, f"helexa --role {role} exited with {process.returncode}"
            assert time.monotonic() < deadline, f"helexa --role {role} did not start in {timeout:.0f} s"
            time.sleep(0.1)
        yield url
        assert process.poll() is None, f"helexa --role {role} died (exit {process.returncode})"
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
