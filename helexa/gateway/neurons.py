"""Talking to neurons: one pooled HTTP client per neuron, for control calls and proxied requests."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec

from helexa.errors import ApiError
from helexa.gateway.transport import LeanTransport
from helexa.settings import GatewaySettings
from helexa.wire.fleet import DiscoveryResponse, HealthResponse, ModelInfo, ModelSpec

T = TypeVar("T")


class NeuronClient:
    def __init__(
        self,
        name: str,
        endpoint: str,
        settings: GatewaySettings,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        proxy = settings.proxy
        self.poll_timeout = settings.poller.timeout_s
        self.load_timeout = settings.lifecycle.load_timeout_s
        self.connect_timeout = proxy.connect_timeout_s
        url = httpx.URL(endpoint)
        self.address = (url.host, url.port or 80)
        self.lean = LeanTransport()
        """The proxy's fast path to this neuron; the httpx client below uses it too (so pool limits
        are the lean transport's own, not httpx's)."""
        self.http = httpx.AsyncClient(
            base_url=endpoint,
            timeout=httpx.Timeout(
                connect=proxy.connect_timeout_s,
                read=max(proxy.first_byte_timeout_s, proxy.stall_timeout_s),
                write=proxy.connect_timeout_s,
                pool=proxy.first_byte_timeout_s,
            ),
            transport=self.lean,
        )

    async def _get(self, path: str, kind: type[T]) -> T:
        response = await self.http.get(path, timeout=self.poll_timeout)
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=kind)

    async def discovery(self) -> DiscoveryResponse:
        return await self._get("/discovery", DiscoveryResponse)

    async def models(self) -> list[ModelInfo]:
        return await self._get("/models", list[ModelInfo])

    async def health(self) -> HealthResponse:
        return await self._get("/health", HealthResponse)

    async def load(self, spec: ModelSpec) -> ModelInfo:
        response = await self.http.post(
            "/models/load",
            content=msgspec.json.encode(spec),
            headers={"content-type": "application/json"},
            timeout=self.load_timeout,
        )
        if response.status_code != 200:
            raise neuron_error(self.name, "load", response)
        model = msgspec.json.decode(response.content).get("model")
        return msgspec.convert(model, ModelInfo)

    async def unload(self, model_id: str) -> None:
        response = await self.http.post(
            "/models/unload", json={"model_id": model_id}, timeout=self.load_timeout
        )
        if response.status_code not in (200, 404):  # 404: already gone, which is what we wanted
            raise neuron_error(self.name, "unload", response)

    async def park(self, model_id: str) -> str:
        """Evict ``model_id``, parking it in host memory where the neuron can; returns what became of
        it (``parked`` or ``unloaded``)."""
        response = await self.http.post(
            "/models/park", json={"model_id": model_id}, timeout=self.load_timeout
        )
        if response.status_code == 404:  # already gone, which is what we wanted
            return "unloaded"
        if response.status_code != 200:
            raise neuron_error(self.name, "park", response)
        return str(response.json().get("status", "unloaded"))

    async def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/v1/tokenize", json=body, timeout=self.poll_timeout * 4)
        if response.status_code != 200:
            raise neuron_error(self.name, "tokenize", response)
        return response.json()

    async def close(self) -> None:
        await self.http.aclose()


def neuron_error(name: str, action: str, response: httpx.Response) -> ApiError:
    """The neuron's own error, with its status and message, said to come from that neuron."""
    try:
        error = response.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
    except ValueError:
        message, code = response.text[:500], None
    return ApiError(response.status_code, f"{action} on neuron {name!r} failed: {message}", code=code)
