"""The gateway service: fleet state, poller, lifecycle, keys and metrics, served by litestar + uvicorn."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.di import Provide

from helexa import config
from helexa.asgi import error_response
from helexa.gateway import control, routes
from helexa.gateway.metrics import metrics_app
from helexa.gateway.service import Gateway
from helexa.openapi import openapi_config, openapi_route
from helexa.runner import split_address
from helexa.settings import Catalogue, GatewaySettings

__all__ = ["Gateway", "create_app", "run"]

log = logging.getLogger("helexa.gateway")


def create_app(gateway: Gateway) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar):  # type: ignore[no-untyped-def]
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    def provide_gateway() -> Gateway:
        return gateway

    app = Litestar(
        [*routes.ROUTES, *control.ROUTES, openapi_route(routes.DESCRIBED)],
        dependencies={"gateway": Provide(provide_gateway, sync_to_thread=False)},
        signature_namespace={"Gateway": Gateway},
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        logging_config=None,
        openapi_config=openapi_config("helexa gateway"),
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
            Listener(create_app(gateway), settings.gateway.listen, "gateway API", http=settings.http),
            Listener(
                metrics_app(gateway.metrics),
                settings.gateway.metrics_listen,
                "gateway metrics",
                lifespan="off",
                http=settings.http,
            ),
        ],
        drain_s=10.0,
    )
