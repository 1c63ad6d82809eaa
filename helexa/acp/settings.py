"""Where the agent's models are: a config file in the XDG config folder, or environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from helexa import config
from helexa.settings import Section

DEFAULT_BASE_URL = "http://127.0.0.1:31313/v1"
DEFAULT_MODEL = "helexa/default"


class AcpEndpoint(Section):
    name: str
    base_url: str
    """OpenAI chat: the URL that ends in /v1. Anthropic messages: the URL without /v1."""
    wire_api: str = "openai-chat"
    default_model: str = DEFAULT_MODEL
    api_key: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable that holds the key (better than the key in a file)."""
    max_tokens: Annotated[int, Meta(ge=1)] = 2048
    context_window: Annotated[int, Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        if self.wire_api not in ("openai-chat", "anthropic-messages"):
            raise ValueError(f"wire_api: expected openai-chat or anthropic-messages, found {self.wire_api!r}")
        self.base_url = self.base_url.rstrip("/")

    def key(self, environ: Mapping[str, str]) -> str | None:
        return environ.get(self.api_key_env) if self.api_key_env else self.api_key


class AcpSettings(Section):
    endpoints: list[AcpEndpoint] = []
    default_endpoint: str | None = None
    system_prompt_path: str | None = None
    log_file: str | None = None


def config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("HELEXA_ACP_CONFIG_PATH"):
        return Path(environ["HELEXA_ACP_CONFIG_PATH"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "helexa-acp" / "config.toml"


def data_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("HELEXA_ACP_DATA_DIR"):
        return Path(environ["HELEXA_ACP_DATA_DIR"])
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "helexa-acp"


def load(environ: Mapping[str, str] | None = None) -> AcpSettings:
    """The config file if there is one, else one endpoint named ``default`` from HELEXA_ACP_* variables."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    if path.exists():
        settings = config.load(AcpSettings, path, environ={})
    else:
        endpoint = {
            "name": "default",
            "base_url": env.get("HELEXA_ACP_BASE_URL", DEFAULT_BASE_URL),
            "wire_api": env.get("HELEXA_ACP_WIRE_API", "openai-chat"),
            "default_model": env.get("HELEXA_ACP_MODEL", DEFAULT_MODEL),
            "api_key": env.get("HELEXA_ACP_API_KEY"),
            "max_tokens": int(env.get("HELEXA_ACP_MAX_TOKENS", "2048")),
        }
        if env.get("HELEXA_ACP_CONTEXT_WINDOW"):
            endpoint["context_window"] = int(env["HELEXA_ACP_CONTEXT_WINDOW"])
        settings = msgspec.convert(
            {"endpoints": [endpoint], "system_prompt_path": env.get("HELEXA_ACP_SYSTEM_PROMPT_PATH")},
            AcpSettings,
        )
    settings.log_file = env.get("HELEXA_ACP_LOG_FILE", settings.log_file)
    if not settings.endpoints:
        raise config.ConfigError(f"{path}: no [[endpoints]]; the agent needs at least one model endpoint")
    return settings
