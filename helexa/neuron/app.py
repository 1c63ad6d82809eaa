"""The neuron service: builds harnesses from plugins, discovers hardware, pre-warms
default models in the background, and shuts down by unloading everything."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Request
from litestar.di import Provide

from helexa import config
from helexa.asgi import error_response
from helexa.errors import ApiError
from helexa.neuron.discovery import Hardware
from helexa.neuron.harness import Harness, HarnessContext
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.models import ModelManager
from helexa.neuron.routes import DESCRIBED, ROUTES
from helexa.neuron.toolformats import ToolFormats
from helexa.openapi import openapi_config, openapi_route
from helexa.plugins import PluginHost, load_plugins
from helexa.settings import NeuronSettings
from helexa.wire.fleet import ActivationFailure, ActivationStatus, DiscoveryResponse, HealthResponse

log = logging.getLogger("helexa.neuron")


class Neuron:
    """Everything one neuron process owns."""

    def __init__(self, settings: NeuronSettings, plugins: PluginHost | None = None) -> None:
        self.settings = settings
        self.name = settings.neuron.name or socket.gethostname()
        self.plugins = plugins or load_plugins(
            disabled=settings.plugins.disable, prefer=settings.plugins.prefer
        )
        names = self.plugins.harnesses.names()
        self.hardware = Hardware(settings, names)
        self.metrics = NeuronMetrics()
        self.harnesses = self._build_harnesses(names)
        self.manager = ModelManager(settings, self.harnesses, self.hardware, self.metrics)
        self.manager.tool_formats = ToolFormats(self.plugins)
        self.activation = ActivationStatus(
            state="pre_warming" if settings.default_models else "ready",
            pending=[m.model_id for m in settings.default_models],
        )
        self.started = time.monotonic()
        self.max_body = int(settings.neuron.max_body_mb * 1024 * 1024)
        self.prewarm_task: asyncio.Task[None] | None = None

    def _build_harnesses(self, names: list[str]) -> dict[str, Harness]:
        harnesses: dict[str, Harness] = {}
        for name in names:
            context = HarnessContext(
                name=name,
                options=dict(self.settings.harness.get(name, {})),
                devices=self.hardware.devices,
                ledger=self.hardware.ledger,
                model_roots=[Path(p) for p in self.settings.neuron.model_roots],
                hf_cache=Path(self.settings.neuron.hf_cache) if self.settings.neuron.hf_cache else None,
                allow_downloads=self.settings.neuron.allow_downloads,
                plugins=self.plugins,
                model_failed=self._model_failed,
            )
            try:
                harnesses[name] = self.plugins.harnesses.get(name)(context)
            except Exception as exc:
                log.error("harness %r could not start and is not available: %s", name, exc)
        if not harnesses:
            log.warning("no harness plugin is installed: this neuron can report hardware but serve nothing")
        return harnesses

    def _model_failed(self, model_id: str, reason: str) -> None:
        self.manager.model_failed(model_id, reason)

    # --- views -----------------------------------------------------------------

    def discovery(self) -> DiscoveryResponse:
        cap = self.settings.neuron.max_prompt_tokens
        found = self.hardware.discovery(self.name, cap)
        found.architectures = self.plugins.architecture_runtimes()
        found.routes = [raw.path for raw in DESCRIBED]
        return found

    def health(self) -> HealthResponse:
        devices = self.hardware.health()
        for device in devices:
            self.metrics.memory_used.labels(str(device.index)).set(device.vram_used_mb)
            self.metrics.memory_free.labels(str(device.index)).set(device.vram_free_mb)
        return HealthResponse(
            uptime_secs=int(time.monotonic() - self.started),
            devices=devices,
            activation=self.activation,
            parked=self.manager.parking(),
        )

    def public_url(self, request: Request) -> str:
        host = request.headers.get("host") or self.settings.neuron.listen
        return f"{request.url.scheme}://{host}"

    # --- lifecycle ---------------------------------------------------------------

    async def prewarm(self) -> None:
        """Load `[[default_models]]` one after another; a failing entry is logged and skipped."""
        status = self.activation
        for spec in self.settings.default_models:
            status.pending.remove(spec.model_id)
            status.in_progress = spec.model_id
            try:
                await self.manager.load(spec)
                status.completed.append(spec.model_id)
            except Exception as exc:
                message = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
                log.error("pre-warm of %s failed: %s", spec.model_id, message)
                status.failed.append(ActivationFailure(model_id=spec.model_id, error=message))
            status.in_progress = None
        status.state = "ready"

    async def shutdown(self) -> None:
        if self.prewarm_task is not None:
            self.prewarm_task.cancel()
        await self.manager.unload_all(self.settings.neuron.unload_timeout_s)
        for harness in self.harnesses.values():
            try:
                await harness.close()
            except Exception as exc:
                log.error("harness %s did not close cleanly: %s", harness.name, exc)
        log.info("neuron stopped")


def create_app(neuron: Neuron) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar):  # type: ignore[no-untyped-def]
        neuron.prewarm_task = asyncio.create_task(neuron.prewarm(), name="prewarm")
        try:
            yield
        finally:
            await neuron.shutdown()

    def provide_neuron() -> Neuron:
        return neuron

    app = Litestar(
        [*ROUTES, openapi_route(DESCRIBED)],
        dependencies={"neuron": Provide(provide_neuron, sync_to_thread=False)},
        signature_namespace={"Neuron": Neuron},
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        request_max_body_size=neuron.max_body,
        logging_config=None,
        openapi_config=openapi_config("helexa neuron"),
    )
    app.state.neuron = neuron
    return app


def run(config_path: Path | None, overrides: dict[str, Any]) -> int:
    """``helexa --role neuron``."""
    from helexa.runner import Listener
    from helexa.runner import run as run_listeners

    try:
        settings = config.load(NeuronSettings, config_path, overrides=overrides)
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 2
    neuron = Neuron(settings)
    devices = ", ".join(f"{d.name} ({d.vram_total_mb} MB)" for d in neuron.hardware.devices)
    log.info(
        "neuron %s: devices %s; harnesses %s", neuron.name, devices, ", ".join(neuron.harnesses) or "none"
    )
    app = create_app(neuron)
    return run_listeners(
        [Listener(app, settings.neuron.listen, "neuron", http=settings.http)], settings.neuron.drain_s
    )
