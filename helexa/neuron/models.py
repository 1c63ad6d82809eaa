"""The neuron's model manager: the one place that knows what is loaded on this host.

Loads are single-flight per model id (a second request for a model that is
loading waits for the same load), each model has its own admission queue, and
unloading aborts whatever the model is still generating.

Parking: an evicted model whose harness can park it keeps its weights in host
memory (status ``parked``, within the `ParkingLot` budget); a later load of it is a
wake, and a wake that fails falls back to a cold load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from helexa.errors import ApiError
from helexa.neuron.admission import Admission
from helexa.neuron.discovery import Hardware
from helexa.neuron.harness import Delta, GenerationRequest, Harness, LoadedModel, Parking
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.parking import MB, ParkingLot, park_budget_bytes, wakes_as
from helexa.neuron.sources import check_model_id, check_options
from helexa.neuron.toolformats import ToolFormats
from helexa.progress import ProgressBoard
from helexa.settings import NeuronSettings
from helexa.wire.fleet import ModelInfo, ModelSpec, ParkingHealth

log = logging.getLogger("helexa.neuron.models")


@dataclass
class ModelEntry:
    spec: ModelSpec
    harness: str
    admission: Admission
    status: str = "loading"
    loaded: LoadedModel | None = None
    error: str | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    stage: str | None = None
    fraction: float | None = None
    parked_bytes: int | None = None
    """Host memory its weights hold while parked."""
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def info(self, parkable: bool = False) -> ModelInfo:
        parked = self.status == "parked"
        loaded = None if parked else self.loaded
        return ModelInfo(
            id=self.spec.model_id,
            harness=self.harness,
            status=self.status,
            devices=loaded.devices if loaded else list(self.spec.devices or []),
            vram_used_mb=sum(loaded.memory_mb.values()) if loaded else None,
            vram_per_device_mb={str(d): mb for d, mb in loaded.memory_mb.items()} if loaded else None,
            capabilities=loaded.capabilities if loaded else [],
            max_model_len=loaded.max_model_len if loaded else None,
            in_flight=self.admission.running,
            queued=self.admission.queued,
            error=self.error,
            loaded_at=self.loaded_at,
            last_used=self.last_used,
            load_stage=self.stage if self.status == "loading" else None,
            load_progress=self.fraction if self.status == "loading" else None,
            architecture=loaded.architecture if loaded else None,
            runtime=loaded.runtime if loaded else None,
            parked_mb=-(-self.parked_bytes // MB) if parked and self.parked_bytes else None,
            parkable=parkable,
        )


class ModelManager:
    def __init__(
        self,
        settings: NeuronSettings,
        harnesses: dict[str, Harness],
        hardware: Hardware,
        metrics: NeuronMetrics,
        board: ProgressBoard | None = None,
    ) -> None:
        self.settings = settings
        self.harnesses = harnesses
        self.hardware = hardware
        self.metrics = metrics
        self.board = board or ProgressBoard()
        self.tool_formats = ToolFormats()
        """The tool-call formats models are read with; the neuron adds the plugins' (`ToolFormats`)."""
        self.entries: dict[str, ModelEntry] = {}
        self.lot = ParkingLot(park_budget_bytes(settings))

    # --- lifecycle -----------------------------------------------------------

    async def load(self, spec: ModelSpec) -> ModelEntry:
        """Load a model, or join the load already running; a loaded model is not loaded twice."""
        entry = self.entries.get(spec.model_id)
        if entry is not None and entry.status in ("loading", "loaded"):
            await asyncio.shield(entry.ready)
            return self._ready(spec.model_id)
        parked = entry if entry is not None and entry.status == "parked" else None
        if parked is not None and not wakes_as(parked.spec, parked.harness, spec):
            log.info(
                "%s is parked with other options than asked for: dropping it to load afresh", spec.model_id
            )
            await self.unload(spec.model_id)
            parked = None
        harness_name = parked.harness if parked else spec.harness or self.settings.neuron.default_harness
        harness = self._harness(harness_name)
        check_model_id(spec.model_id, [Path(p) for p in self.settings.neuron.model_roots])
        check_options(spec.options)
        if self.hardware.unavailable_reason and not self.hardware.devices:
            raise ApiError(
                503,
                f"GPUs unavailable on this neuron: {self.hardware.unavailable_reason}",
                code="cuda_unavailable",
            )
        devices = self._choose_devices(spec)
        if parked is not None:  # the same entry wakes: its admission queue and history carry on
            entry, parked.status = parked, "loading"
            entry.ready = asyncio.get_running_loop().create_future()
        else:
            entry = ModelEntry(
                spec=spec,
                harness=harness_name,
                admission=Admission(
                    spec.model_id, self.settings.neuron.max_running, self.settings.neuron.max_queue
                ),
            )
        self.entries[spec.model_id] = entry
        task = asyncio.ensure_future(self._load(entry, harness, devices, wake=parked is not None))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported through entry.ready
        await asyncio.shield(entry.ready)
        return self._ready(spec.model_id)

    async def _load(
        self, entry: ModelEntry, harness: Harness, devices: list[int], wake: bool = False
    ) -> None:
        model_id = entry.spec.model_id
        self.board.start(model_id, f"{'waking' if wake else 'loading'} {model_id}")

        def progress(stage: str, fraction: float | None) -> None:
            entry.stage, entry.fraction = stage, fraction
            self.board.update(model_id, stage, fraction)

        started = time.monotonic()
        try:
            woken = await self._wake(entry, harness, devices, progress) if wake else None
            entry.loaded = woken or await harness.load(entry.spec, devices, progress)
        except BaseException as exc:
            self.hardware.ledger.release(model_id)
            entry.status = "failed"
            entry.error = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            self.board.finish(model_id, f"failed ({entry.error})")
            self.metrics.load_seconds.labels(model_id, entry.harness, "failed").observe(
                time.monotonic() - started
            )
            entry.ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            entry.ready.exception()  # retrieved here so an unawaited failure is not logged as lost
            return
        loaded = entry.loaded
        if "tools" in loaded.capabilities:
            loaded.tool_format = self.tool_formats.choose(
                loaded.tool_format, loaded.chat_template, loaded.special_tokens
            )
            log.info("%s writes tool calls in the %s format", model_id, loaded.tool_format)
        entry.status, entry.loaded_at, entry.stage, entry.fraction = "loaded", time.time(), None, None
        elapsed = self.board.finish(model_id, "woken" if woken else "loaded")
        if not woken:
            self.metrics.load_seconds.labels(model_id, entry.harness, "loaded").observe(elapsed)
        self.metrics.models_loaded.set(sum(e.status == "loaded" for e in self.entries.values()))
        self.hardware.forget_health()
        entry.ready.set_result(None)

    async def _wake(
        self, entry: ModelEntry, harness: Harness, devices: list[int], progress: Callable[..., None]
    ) -> LoadedModel | None:
        """Wake a parked model; None (after dropping the parked copy) when the wake fails."""
        model_id = entry.spec.model_id
        self.lot.remove(model_id)
        self._parked_gauges()
        entry.parked_bytes = None
        started = time.monotonic()
        try:
            assert isinstance(harness, Parking)
            loaded = await harness.wake(model_id, devices, progress)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            log.warning("waking %s failed (%s); loading it from its source instead", model_id, reason)
            self.metrics.wakes.labels(model_id, "failed").inc()
            self.hardware.ledger.release(model_id)
            with suppress(Exception):
                await harness.unload(model_id)  # the parked copy goes; the cold load starts clean
            return None
        elapsed = time.monotonic() - started
        self.metrics.wakes.labels(model_id, "ok").inc()
        self.metrics.wake_seconds.labels(model_id).observe(elapsed)
        log.info("woke %s from host memory in %.2f s", model_id, elapsed)
        return loaded

    def _ready(self, model_id: str) -> ModelEntry:
        entry = self.entries.get(model_id)
        if entry is None or entry.status != "loaded":
            raise ApiError(
                409, f"model {model_id!r} was unloaded while it was loading", code="model_unloaded"
            )
        return entry

    async def unload(self, model_id: str) -> None:
        """Unload for good: a parked model's host copy goes too."""
        entry = self.entries.get(model_id)
        if entry is None or entry.status == "failed":
            self.entries.pop(model_id, None)
            raise ApiError(404, f"model {model_id!r} is not loaded", code="model_not_found")
        if entry.status == "loading":
            with suppress(Exception):
                await asyncio.shield(entry.ready)
        if entry.status == "unloading":
            raise ApiError(409, f"model {model_id!r} is already being unloaded", code="model_unloading")
        was_parked = entry.status == "parked"
        entry.status = "unloading"  # every generation still running ends at its next step (Generation)
        try:
            await self.harnesses[entry.harness].unload(model_id)
        finally:
            self.hardware.ledger.release(model_id)
            self.entries.pop(model_id, None)
            self.lot.remove(model_id)
            self._parked_gauges()
            self.hardware.forget_health()
            self.metrics.models_loaded.set(sum(e.status == "loaded" for e in self.entries.values()))
            log.info("%s %s", "dropped parked" if was_parked else "unloaded", model_id)

    def model_failed(self, model_id: str, reason: str) -> None:
        """A harness reports that a loaded model can no longer serve: it shows ``failed`` until unloaded
        or loaded again (its streams have already ended with the reason)."""
        entry = self.entries.get(model_id)
        if entry is None or entry.status != "loaded":
            return
        entry.status, entry.error = "failed", reason
        self.hardware.ledger.release(model_id)
        self.hardware.forget_health()
        self.metrics.models_loaded.set(sum(e.status == "loaded" for e in self.entries.values()))
        log.error("%s failed while loaded: %s", model_id, reason)

    async def park(self, model_id: str) -> str:
        """Evict a model, keeping its weights in host memory where the harness and the budget allow;
        returns ``parked`` or ``unloaded`` (what became of it)."""
        entry = self.entries.get(model_id)
        if entry is not None and entry.status == "loading":
            with suppress(Exception):
                await asyncio.shield(entry.ready)
        if entry is not None and entry.status == "parked":
            return "parked"
        if entry is None or entry.status != "loaded":
            await self.unload(model_id)  # answers 404/409 as an unload would
            return "unloaded"
        harness = self.harnesses[entry.harness]
        size = self._park_size(entry)
        drop = self.lot.to_drop(size) if size is not None else None
        if size is None or drop is None:
            self.metrics.parks.labels(model_id, "unloaded").inc()
            await self.unload(model_id)
            return "unloaded"
        for oldest in drop:
            log.info("dropping parked %s to make room in the park budget for %s", oldest, model_id)
            self.metrics.parked_dropped.labels(oldest).inc()
            await self.unload(oldest)
        entry.status = "unloading"  # generations still running end at their next step
        try:
            assert isinstance(harness, Parking)
            await harness.park(model_id)
        except Exception as exc:
            log.warning("parking %s failed (%s); unloading it instead", model_id, exc)
            entry.status = "loaded"
            self.metrics.parks.labels(model_id, "unloaded").inc()
            await self.unload(model_id)
            return "unloaded"
        self.hardware.ledger.release(model_id)
        entry.status, entry.parked_bytes = "parked", size
        self.lot.add(model_id, size)
        self._parked_gauges()
        self.hardware.forget_health()
        self.metrics.parks.labels(model_id, "parked").inc()
        self.metrics.models_loaded.set(sum(e.status == "loaded" for e in self.entries.values()))
        log.info("parked %s: %d MB of weights kept in host memory", model_id, -(-size // MB))
        return "parked"

    def _park_size(self, entry: ModelEntry) -> int | None:
        harness = self.harnesses[entry.harness]
        if not isinstance(harness, Parking) or self.lot.budget <= 0:
            return None
        return harness.park_size(entry.spec.model_id)

    def _parkable(self, entry: ModelEntry) -> bool:
        if entry.status != "loaded":
            return False
        size = self._park_size(entry)
        return size is not None and self.lot.fits(size)

    def _parked_gauges(self) -> None:
        self.metrics.parked_bytes.set(self.lot.used)
        self.metrics.models_parked.set(len(self.lot.parked))

    async def unload_all(self, timeout_s: float) -> None:
        for model_id, entry in list(self.entries.items()):
            if entry.status == "failed":
                self.entries.pop(model_id, None)
                continue
            try:
                await asyncio.wait_for(self.unload(model_id), timeout_s)
            except Exception as exc:  # keep going: every model gets its chance
                log.error("unloading %s at shutdown failed: %s", model_id, exc)

    # --- serving -------------------------------------------------------------

    def get(self, model_id: str) -> ModelEntry:
        entry = self.entries.get(model_id)
        if entry is None or entry.status != "loaded":
            state = f" (it is {entry.status})" if entry else ""
            loaded = ", ".join(sorted(m for m, e in self.entries.items() if e.status == "loaded")) or "none"
            raise ApiError(
                404,
                f"model {model_id!r} is not loaded on this neuron{state}; loaded: {loaded}",
                code="model_not_found",
                type="invalid_request_error",
                extras={"model_id": model_id},
            )
        return entry

    def harness_of(self, entry: ModelEntry) -> Harness:
        return self.harnesses[entry.harness]

    def generate(self, entry: ModelEntry, request: GenerationRequest) -> Generation:
        """Admit a request (429 at once when the model is full) and return its token stream."""
        return Generation(self, entry, request)

    def list(self) -> list[ModelInfo]:
        return [e.info(self._parkable(e)) for e in self.entries.values()]

    def parking(self) -> ParkingHealth:
        return ParkingHealth(
            models=list(self.lot.parked), used_mb=-(-self.lot.used // MB), budget_mb=self.lot.budget // MB
        )

    # --- helpers -------------------------------------------------------------

    def _harness(self, name: str) -> Harness:
        harness = self.harnesses.get(name)
        if harness is None:
            known = ", ".join(sorted(self.harnesses)) or "none"
            raise ApiError(
                400,
                f"no harness named {name!r} on this neuron (harnesses: {known})",
                code="unknown_harness",
                param="harness",
            )
        return harness

    def _choose_devices(self, spec: ModelSpec) -> list[int]:
        known = [d.index for d in self.hardware.devices]
        wanted = spec.tensor_parallel or (len(spec.devices) if spec.devices else 1)
        if spec.devices is not None:
            if len(spec.devices) != wanted:
                raise ApiError(
                    400,
                    f"tensor_parallel={wanted} requires {wanted} entries in devices, got {spec.devices}",
                    param="devices",
                )
            unknown = [d for d in spec.devices if d not in known]
            if unknown:
                raise ApiError(
                    400, f"no device {unknown[0]} on this neuron (devices: {known})", param="devices"
                )
            return list(spec.devices)
        cpu_only = bool(self.hardware.devices) and all(d.kind == "cpu" for d in self.hardware.devices)
        if wanted > len(known) and cpu_only:
            return [known[0]]  # the ranks of a CPU-only neuron share its one CPU device (and its cores)
        if wanted > len(known):
            raise ApiError(
                400,
                f"tensor_parallel={wanted} needs {wanted} devices; this neuron has {len(known)}",
                param="tensor_parallel",
            )
        ledger = self.hardware.ledger
        return sorted(sorted(known, key=lambda d: (-ledger.free(d), d))[:wanted])


class Generation:
    """One request's stream of deltas. ``aclose`` aborts the sequence and frees its place,
    whether or not iteration ever started."""

    def __init__(self, manager: ModelManager, entry: ModelEntry, request: GenerationRequest) -> None:
        self.manager = manager
        self.entry = entry
        self.request = request
        self.ticket = entry.admission.admit()
        self.stream: AsyncIterator[Delta] | None = None
        self.finished = False
        self._gauges()

    def _gauges(self) -> None:
        model_id, admission = self.entry.spec.model_id, self.entry.admission
        self.manager.metrics.queue_depth.labels(model_id).set(admission.queued)
        self.manager.metrics.running.labels(model_id).set(admission.running)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Delta:
        if self.ticket.state == "done":
            raise StopAsyncIteration
        if self.stream is None:
            await self._start()
        assert self.stream is not None
        try:
            delta = await self.stream.__anext__()
        except StopAsyncIteration:
            self.finished = True
            await self.aclose()
            raise
        if delta.finish_reason is not None:
            self.finished = True
        elif self.entry.status != "loaded":  # the model is being unloaded under this request
            await self.aclose(reason="unloaded")
            raise ApiError(
                503,
                f"model {self.entry.spec.model_id!r} was unloaded while generating; retry",
                code="model_unloaded",
                retry_after=1,
            )
        return delta

    async def _start(self) -> None:
        entry = self.entry
        model_id = entry.spec.model_id
        await self.ticket.__aenter__()
        self._gauges()
        if entry.status != "loaded":
            raise ApiError(404, f"model {model_id!r} was unloaded", code="model_not_found")
        entry.last_used = time.time()
        self.stream = self.manager.harness_of(entry).generate(model_id, self.request)

    async def resume(self, request: GenerationRequest) -> None:
        """Go on in this request's place with a new sequence (a thinking budget closing the think block)."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            self.request = request
            self.stream = self.manager.harness_of(self.entry).generate(self.entry.spec.model_id, request)
        else:
            self.request = request
            await self._start()

    async def aclose(self, reason: str = "client") -> None:
        entry, metrics = self.entry, self.manager.metrics
        if self.stream is not None:
            stream, self.stream = self.stream, None
            entry.last_used = time.time()
            if not self.finished:
                metrics.aborted.labels(entry.spec.model_id, reason).inc()
            with suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        await self.ticket.release_async()
        self._gauges()
