"""LiteLLM's proxy as a side-by-side peer for gateway_overhead.py (``--litellm``).

Installs one pinned LiteLLM release into a throwaway virtual environment under
the user's cache (never a project dependency), following the recipe in
``../shared/reference/perf-anchors.md``: the wheel's own ``proxy`` extra cannot be
resolved from the package index here (``litellm-proxy`` is missing and two exact
pins are absent), so the extra's requirement list is installed with those pins
relaxed to the newest published versions. Releases reported as compromised are
refused, and the environment is checked for start-up hooks (``.pth`` files other
than setuptools' own shim) before anything in it runs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from _common import serving

from helexa.testing import free_port

VERSION = "1.110.2"
COMPROMISED = {"1.82.7", "1.82.8", "1.107.0"}  # gateway-peers.md and the index's own warnings
RELAXED_PINS = {  # exact pins of the proxy extra that the index does not carry -> newest it does
    "litellm-proxy-extras": "litellm-proxy-extras==0.4.110",
    "litellm-enterprise": "litellm-enterprise==0.1.83",
}
EXTRA = ["opentelemetry-sdk==1.45.2"]  # else every request retries a failing import (perf-anchors.md §2.4)
ALLOWED_PTH = {"distutils-precedence.pth"}


def environment(version: str = VERSION) -> Path:
    """The virtual environment holding LiteLLM ``version``; built on first use (about a minute)."""
    if version in COMPROMISED:
        raise SystemExit(f"refusing LiteLLM {version}: that release was reported compromised")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helexa-bench"
    venv = cache / f"litellm-{version}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        print(f"installing LiteLLM {version} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        with tempfile.TemporaryDirectory() as download:
            pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
            subprocess.run([*pip, "download", "--no-deps", f"litellm=={version}", "-d", download], check=True)
            (wheel,) = Path(download).glob("litellm-*.whl")
            requirements = Path(download) / "proxy.txt"
            requirements.write_text("\n".join(proxy_requirements(wheel, version)) + "\n")
            subprocess.run([*pip, "install", str(wheel), "-r", str(requirements), *EXTRA], check=True)
        (venv / ".ready").touch()
    check_start_up_hooks(venv)
    return venv


def proxy_requirements(wheel: Path, version: str) -> list[str]:
    """The wheel's ``proxy`` extra, without ``litellm-proxy`` and with unavailable pins relaxed."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"litellm-{version}.dist-info/METADATA").decode()
    requirements = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:") or "extra == 'proxy'" not in line:
            continue
        requirement = line.removeprefix("Requires-Dist:").split(";")[0].strip()
        name = requirement.split("==")[0].split(">")[0].split("<")[0].split("[")[0].strip()
        if name == "litellm-proxy":
            continue
        requirements.append(RELAXED_PINS.get(name, requirement))
    return requirements


def check_start_up_hooks(venv: Path) -> None:
    """Refuse an environment that runs code at interpreter start (the known supply-chain trick)."""
    (site,) = venv.glob("lib/python3*/site-packages")
    found = {p.name for p in site.glob("*.pth")} - ALLOWED_PTH
    found |= {p.name for p in site.glob("*customize.py")}
    if found:
        raise SystemExit(f"refusing {venv}: unexpected start-up hooks {sorted(found)}")


@contextlib.contextmanager
def litellm_proxy(upstream_port: int, model: str) -> Iterator[tuple[int, int, dict[str, str]]]:
    """Run LiteLLM's proxy (one worker) in front of the mock upstream.

    Yields its port, its pid and the headers a client needs (it refuses to start
    without a master key, so key checking is on the measured path, as in production).
    """
    venv = environment()
    port = free_port()
    key = "sk-bench-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
            "      api_key: dummy\n"
            f"general_settings:\n  master_key: {key}\n"
        )
        env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": folder, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        command = [str(venv / "bin" / "litellm"), "--config", str(config), "--num_workers", "1"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with serving(
            command,
            f"http://127.0.0.1:{port}/health/liveliness",
            env,
            timeout=180,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as process:
            yield port, process.pid, {"authorization": f"Bearer {key}"}
