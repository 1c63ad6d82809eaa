"""``/openapi.json`` for gateway and neuron: litestar's schema plus the raw ASGI inference routes.

litestar describes the routes it serves itself (control and admin, with their
typed bodies). The inference routes are plain ASGI for speed, so litestar cannot
see them; each role lists them as `RawRoute`s and this module adds them, with
their request bodies (msgspec Structs), both answer shapes (JSON and SSE) and the
error envelope of their protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, get
from litestar.openapi import OpenAPIConfig

from helexa import __version__
from helexa.wire.errors import AnthropicError, OpenAIError

REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class RawRoute:
    path: str
    body: type
    """The msgspec Struct the request body must match."""
    summary: str
    anthropic: bool = False
    """Errors in Anthropic's envelope (else OpenAI's)."""
    streams: bool = True
    """``"stream": true`` answers with server-sent events."""


def openapi_config(title: str) -> OpenAPIConfig:
    # litestar's own documentation routes stay off: /openapi.json below is the one schema.
    return OpenAPIConfig(
        title=title, version=__version__, path="/schema", render_plugins=[], enabled_endpoints=set()
    )


def _operation(route: RawRoute) -> dict[str, Any]:
    envelope = {"$ref": REF.format(name="AnthropicError" if route.anthropic else "OpenAIError")}
    ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if route.streams:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    error = {"content": {"application/json": {"schema": envelope}}}
    return {
        "post": {
            "summary": route.summary,
            "operationId": "raw_" + route.path.strip("/").replace("/", "_"),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=route.body.__name__)}}},
            },
            "responses": {
                "200": {
                    "description": "the answer (server-sent events when the body asks to stream)",
                    "content": ok,
                },
                "4XX": {"description": "the request cannot be served as sent", **error},
                "5XX": {
                    "description": "the fleet could not serve it (Retry-After says when to retry)",
                    **error,
                },
            },
        }
    }


def document(base: dict[str, Any], raw: list[RawRoute]) -> dict[str, Any]:
    """litestar's schema ``base`` with the raw routes and the error envelopes added."""
    _, components = msgspec.json.schema_components(
        [OpenAIError, AnthropicError, *(r.body for r in raw)], ref_template=REF
    )
    schemas = base.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    paths = base.setdefault("paths", {})
    for route in raw:
        paths[route.path] = _operation(route)
    envelope = {"content": {"application/json": {"schema": {"$ref": REF.format(name="OpenAIError")}}}}
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("4XX", {"description": "error", **envelope})
    return base


def openapi_route(raw: list[RawRoute]) -> Any:
    @get("/openapi.json", include_in_schema=False, sync_to_thread=False)
    def openapi(request: Request) -> dict[str, Any]:
        return document(request.app.openapi_schema.to_schema(), raw)

    return openapi
