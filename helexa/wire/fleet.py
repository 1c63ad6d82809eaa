"""The fleet protocol between gateway and neurons: discovery, health, models, builds."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta


class ModelSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to load: the body of ``POST /models/load`` and a `[[default_models]]` entry."""

    model_id: str
    harness: str | None = None
    """Harness plugin name; None means the neuron's default harness."""
    quant: str | None = None
    tensor_parallel: Annotated[int, Meta(ge=1)] | None = None
    devices: list[Annotated[int, Meta(ge=0)]] | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Harness-specific options (dtype, size_mb, max_model_len, ...)."""


class UnloadRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST /models/unload`` (unload for good, parked copy included) and
    ``POST /models/park`` (free the device, keep the weights in host memory)."""

    model_id: str


class DeviceInfo(msgspec.Struct, kw_only=True):
    index: int
    name: str
    vram_total_mb: int
    compute_capability: str = ""
    kind: str = "cuda"
    """cuda | cpu | simulated."""


class DiscoveryResponse(msgspec.Struct, kw_only=True):
    hostname: str
    os: str
    kernel: str
    devices: list[DeviceInfo]
    harnesses: list[str]
    cuda_version: str | None = None
    driver_version: str | None = None
    cuda_unavailable_reason: str | None = None
    max_prompt_tokens: int = 0
    cpu_cores: int = 0
    memory_total_mb: int = 0
    name: str = ""
    """The neuron's configured name (defaults to the hostname)."""
    architectures: dict[str, str] = msgspec.field(default_factory=dict)
    """Model architectures the harnesses can run -> ``native`` or ``fallback`` (see `helexa plugins`)."""
    routes: list[str] = msgspec.field(default_factory=list)
    """The inference routes it serves (``/v1/chat/completions``, ...); empty from a neuron too old to
    say, which the gateway takes to serve every route."""


class DeviceHealth(msgspec.Struct, kw_only=True):
    index: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: int = 0
    temp_c: int = 0


class ActivationFailure(msgspec.Struct, kw_only=True):
    model_id: str
    error: str


class ActivationStatus(msgspec.Struct, kw_only=True):
    """Progress of pre-warming the neuron's default models."""

    state: str = "ready"  # pre_warming | ready
    pending: list[str] = msgspec.field(default_factory=list)
    in_progress: str | None = None
    completed: list[str] = msgspec.field(default_factory=list)
    failed: list[ActivationFailure] = msgspec.field(default_factory=list)


class ParkingHealth(msgspec.Struct, kw_only=True):
    """Models parked in host memory, and the budget they live in."""

    models: list[str] = msgspec.field(default_factory=list)
    """Oldest parked first (the next to be dropped when the budget is full)."""
    used_mb: int = 0
    budget_mb: int = 0


class HealthResponse(msgspec.Struct, kw_only=True):
    uptime_secs: int
    devices: list[DeviceHealth]
    activation: ActivationStatus = msgspec.field(default_factory=ActivationStatus)
    status: str = "ok"  # ok | draining
    parked: ParkingHealth = msgspec.field(default_factory=ParkingHealth)


class ModelInfo(msgspec.Struct, kw_only=True):
    """One model on a neuron, as ``GET /models`` lists it."""

    id: str
    harness: str
    status: str  # loading | loaded | parked | failed | unloading
    devices: list[int] = msgspec.field(default_factory=list)
    vram_used_mb: int | None = None
    vram_per_device_mb: dict[str, int] | None = None
    """What it holds on each of its devices, by device index (a tensor-parallel model's ranks need
    not be equal); keys are strings, as JSON has them."""
    capabilities: list[str] = msgspec.field(default_factory=list)
    max_model_len: int | None = None
    in_flight: int = 0
    queued: int = 0
    error: str | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    load_stage: str | None = None
    load_progress: float | None = None
    architecture: str | None = None
    runtime: str | None = None
    """``native``, or ``fallback`` when the harness runs the architecture through transformers."""
    parked_mb: int | None = None
    """Host memory the model's weights hold while it is parked (it holds no device memory then)."""
    parkable: bool = False
    """Evicting it would park it (a later wake is a copy, not a load) rather than drop it."""


class LoadResponse(msgspec.Struct, kw_only=True):
    status: str
    """``loaded``, ``unloaded``, or ``parked``."""
    model: ModelInfo | None = None


class EndpointResponse(msgspec.Struct, kw_only=True):
    url: str


class BuildInfo(msgspec.Struct, kw_only=True):
    """``GET /version`` on gateway and neuron."""

    package_version: str
    git_sha: str = "unknown"
    git_sha_long: str | None = None
    git_dirty: bool = False
    build_timestamp: str | None = None
    python_version: str | None = None
    platform: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    features: list[str] = msgspec.field(default_factory=list)
    role: str | None = None
