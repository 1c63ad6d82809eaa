"""The gateway service: fleet state, poller, lifecycle, keys and metrics, served by litestar + uvicorn."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from litestar import Litestar

from helexa import config
from helexa.asgi import error_response
from helexa.gateway.anthropic import ANTHROPIC_ROUTES
from helexa.gateway.auth import Keys
from helexa.gateway.fleet import FleetState, Lease
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.metrics import GatewayMetrics, metrics_app
from helexa.gateway.neurons import NeuronClient
from helexa.gateway.poller import Poller
from helexa.gateway.proxy import Upstream
from helexa.gateway.routes import ROUTES
from helexa.plugins import load_plugins
from helexa.runner import split_address
from helexa.settings import Catalogue, GatewaySettings

log = logging.getLogger("helexa.gateway")


class Gateway:
    """Everything one gateway process owns."""

    def __init__(
        self,
        settings: GatewaySettings,
        catalogue: Catalogue,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.metrics = GatewayMetrics()
        self.fleet = FleetState(settings.neurons, settings.poller.unhealthy_after)
        self.clients = {
            n.name: NeuronClient(n.name, n.endpoint, settings, transport) for n in settings.neurons
        }
        self.poller = Poller(self.fleet, self.clients, settings.poller.interval_s, self.metrics)
        plugins = load_plugins(disabled=settings.plugins.disable, prefer=settings.plugins.prefer)
        strategy = plugins.eviction_strategies.get(settings.eviction.strategy)()
        self.lifecycle = Lifecycle(
            settings, catalogue, self.fleet, self.clients, strategy, self.metrics, self.poller.poll
        )
        self.keys = Keys(settings.auth)
        self.max_body = int(settings.gateway.max_body_mb * 1024 * 1024)

    def upstream(self, lease: Lease) -> Upstream:
        proxy = self.settings.proxy
        return Upstream(
            self.clients[lease.node.name],
            lease,
            self.metrics,
            proxy.stall_timeout_s,
            proxy.first_byte_timeout_s,
        )

    async def start(self) -> None:
        self.poller.start()

    async def stop(self) -> None:
        await self.poller.stop()
        for client in self.clients.values():
            await client.close()


def create_app(gateway: Gateway) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar):  # type: ignore[no-untyped-def]
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Litestar(
        [*ROUTES, *ANTHROPIC_ROUTES],
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        logging_config=None,
        openapi_config=None,
    )
    app.state.gateway = gateway
    return app


def load_settings(config_path: Path | None, overrides: dict[str, Any]) -> tuple[GatewaySettings, Catalogue]:
    settings = config.load(GatewaySettings, config_path, overrides=overrides)
    catalogue_path = Path(settings.gateway.catalogue)
    if catalogue_path.exists():
        catalogue = config.load_catalogue(catalogue_path)
    else:
        log.warning(
            "no model catalogue at %s: only models the neurons already have are served", catalogue_path
        )
        catalogue = Catalogue()
    return settings, catalogue


def warn_if_open(gateway: Gateway) -> None:
    host, _ = split_address(gateway.settings.gateway.listen)
    if not gateway.keys.enabled and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the gateway listens on %s with no API keys: anyone who can reach it can use and "
            "administer the fleet (set [auth] keys and admin_keys)",
            gateway.settings.gateway.listen,
        )


def run(config_path: Path | None, overrides: dict[str, Any]) -> int:
    """``helexa --role gateway``."""
    from helexa.runner import Listener
    from helexa.runner import run as run_listeners

    try:
        settings, catalogue = load_settings(config_path, overrides)
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 2
    gateway = Gateway(settings, catalogue)
    warn_if_open(gateway)
    log.info(
        "gateway: %d neurons, %d catalogue models, eviction strategy %s",
        len(settings.neurons),
        len(catalogue.models),
        settings.eviction.strategy,
    )
    return run_listeners(
        [
            Listener(create_app(gateway), settings.gateway.listen, "gateway API"),
            Listener(metrics_app(gateway.metrics), settings.gateway.metrics_listen, "gateway metrics"),
        ],
        drain_s=10.0,
    )
