"""What a benchmark target is running: its build, its hardware, and its loaded models."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from helexa.settings import BenchTarget


@dataclass
class Stamp:
    """The build and hardware every row from this target is stamped with."""

    git_sha: str = "external"
    package_version: str = "external"
    git_sha_long: str | None = None
    git_dirty: bool = False
    build_timestamp: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    features_json: str = "[]"
    hostname: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus_json: str | None = None


@dataclass
class TargetModel:
    id: str
    harness: str = ""
    capabilities: list[str] = field(default_factory=list)
    devices: list[int] = field(default_factory=list)


def gpu_label(names: list[str]) -> str:
    """``2x RTX 5090`` or ``RTX 4090 + RTX 3060``, vendor prefixes dropped."""
    short = [n.removeprefix("NVIDIA ").removeprefix("GeForce ") for n in names]
    if not short:
        return "-"
    if len(set(short)) == 1 and len(short) > 1:
        return f"{len(short)}x {short[0]}"
    return " + ".join(short)


class Target:
    def __init__(self, settings: BenchTarget, timeout_s: float) -> None:
        self.settings = settings
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(
            base_url=settings.endpoint, headers=headers, timeout=httpx.Timeout(10.0, read=timeout_s)
        )

    @property
    def chat_path(self) -> str:
        return "/chat/completions" if self.settings.kind == "openai" else "/v1/chat/completions"

    async def stamp(self) -> Stamp:
        if self.settings.kind == "openai":
            return Stamp()
        info = (await self.http.get("/version")).raise_for_status().json()
        stamp = Stamp(
            git_sha=info.get("git_sha", "unknown"),
            package_version=info["package_version"],
            git_sha_long=info.get("git_sha_long"),
            git_dirty=bool(info.get("git_dirty")),
            build_timestamp=info.get("build_timestamp"),
            python_version=info.get("python_version"),
            torch_version=info.get("torch_version"),
            transformers_version=info.get("transformers_version"),
            features_json=json.dumps(info.get("features", [])),
        )
        if self.settings.kind == "neuron":
            found = await self.http.get("/discovery")
            if found.status_code == 200:
                discovery = found.json()
                stamp.hostname = discovery.get("hostname")
                stamp.driver_version = discovery.get("driver_version")
                stamp.cuda_version = discovery.get("cuda_version")
                stamp.gpus_json = json.dumps([d["name"] for d in discovery.get("devices", [])])
        return stamp

    async def models(self) -> list[TargetModel]:
        kind = self.settings.kind
        if kind == "neuron":
            listed = (await self.http.get("/models")).raise_for_status().json()
            return [
                TargetModel(m["id"], m.get("harness", ""), m.get("capabilities", []), m.get("devices", []))
                for m in listed
                if m.get("status") == "loaded"
            ]
        path = "/models" if kind == "openai" else "/v1/models"
        data: list[dict[str, Any]] = (await self.http.get(path)).raise_for_status().json().get("data", [])
        if kind == "gateway":  # what is loaded now, not what could be; aliases are the same models
            data = [m for m in data if m.get("loaded") and not m.get("alias_of")]
        return [TargetModel(m["id"], capabilities=m.get("capabilities", [])) for m in data]

    async def close(self) -> None:
        await self.http.aclose()
