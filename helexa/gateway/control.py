"""The gateway's JSON routes (models, health, version, admin) as litestar handlers.

Speed does not matter here, so these use litestar as intended: typed bodies
decoded and validated by litestar, the `Gateway` injected as a dependency, API
keys checked by guards, and every route described in ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from helexa.buildinfo import build_info
from helexa.errors import ApiError
from helexa.gateway import views
from helexa.gateway.service import Gateway


def user_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    connection.app.state.gateway.keys.check(connection.scope["headers"])


def admin_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    connection.app.state.gateway.keys.check(connection.scope["headers"], admin=True)


class AdminLoad(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None
    """Load on this neuron (default: wherever placement ranks first)."""
    pinned: bool = False
    """Never evict it until it is unloaded through the admin API."""


class AdminUnload(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    node: str | None = None
    """Unload only from this neuron (default: from every neuron that has it)."""


class Loaded(msgspec.Struct):
    status: str
    model: str
    node: str
    pinned: bool


class Unloaded(msgspec.Struct):
    status: str
    model: str
    nodes: list[str]


@get("/v1/models", guards=[user_key], sync_to_thread=False)
def list_models(gateway: Gateway) -> dict[str, Any]:
    """Every model the fleet serves or could load, where it is, and where it could go."""
    return views.model_list(gateway.fleet, gateway.lifecycle)


@get("/v1/models/{model_id:path}", guards=[user_key], sync_to_thread=False)
def retrieve_model(gateway: Gateway, model_id: str) -> dict[str, Any]:
    """One model as an OpenAI model object (``client.models.retrieve``); 404 when the fleet lacks it."""
    model_id = model_id.strip("/")
    for item in views.model_list(gateway.fleet, gateway.lifecycle)["data"]:
        if item["id"] == model_id:
            return item
    raise ApiError(
        404, f"no model {model_id!r}; GET /v1/models lists them", code="model_not_found", param="model"
    )


@get("/health", sync_to_thread=False)
def health(gateway: Gateway) -> dict[str, Any]:
    """Whether the gateway has a healthy neuron; no key needed."""
    return views.health(gateway.fleet)


@get("/version", sync_to_thread=False)
def version() -> dict[str, Any]:
    """Package version, git sha and the versions of what it runs on; no key needed."""
    return build_info("gateway")


@get("/admin/fleet", guards=[admin_key], sync_to_thread=False)
def admin_fleet(gateway: Gateway) -> dict[str, Any]:
    """Every neuron, its devices and models, loads in progress."""
    return views.fleet_view(gateway.fleet, gateway.lifecycle)


@post("/admin/models/load", guards=[admin_key], status_code=200)
async def admin_load(gateway: Gateway, data: AdminLoad) -> Loaded:
    """Load a model now (optionally on one neuron, optionally pinned)."""
    node, replica = await gateway.lifecycle.admin_load(data.model, data.node, data.pinned)
    return Loaded(status="loaded", model=replica.model_id, node=node.name, pinned=replica.pinned)


@post("/admin/models/unload", guards=[admin_key], status_code=200)
async def admin_unload(gateway: Gateway, data: AdminUnload) -> Unloaded:
    """Unload a model (from one neuron, or from every neuron that has it)."""
    nodes = await gateway.lifecycle.admin_unload(data.model, data.node)
    return Unloaded(status="unloaded", model=gateway.lifecycle.resolve(data.model), nodes=nodes)


class Parked(msgspec.Struct):
    model: str
    nodes: dict[str, str]
    """Each neuron that had the model and what it did: ``parked`` or ``unloaded``."""


@post("/admin/models/park", guards=[admin_key], status_code=200)
async def admin_park(gateway: Gateway, data: AdminUnload) -> Parked:
    """Evict a model, parking it (weights kept in host memory) where the neuron can."""
    outcomes = await gateway.lifecycle.admin_park(data.model, data.node)
    return Parked(model=gateway.lifecycle.resolve(data.model), nodes=outcomes)


ROUTES = [list_models, retrieve_model, health, version, admin_fleet, admin_load, admin_unload, admin_park]
