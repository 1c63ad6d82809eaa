"""What build is running: served as ``GET /version`` and stamped on every benchmark row.

The git revision comes from ``HELEXA_BUILD_SHA`` (set by packaging), else from a
``_build.json`` written into the package at build time, else from the checkout the
package runs from. torch and transformers versions are read from installed
metadata, so asking never imports them.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from helexa import __version__
from helexa.wire.fleet import BuildInfo

PACKAGE_DIR = Path(__file__).resolve().parent


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _revision() -> tuple[str | None, bool, str | None]:
    """(full sha, dirty, build timestamp) from the environment, a stamp file or git."""
    env_sha = os.environ.get("HELEXA_BUILD_SHA")
    if env_sha:
        return env_sha, os.environ.get("HELEXA_BUILD_DIRTY", "") == "1", os.environ.get("HELEXA_BUILD_TIME")
    stamp = PACKAGE_DIR / "_build.json"
    if stamp.exists():
        data = json.loads(stamp.read_text())
        return data.get("git_sha_long"), bool(data.get("git_dirty")), data.get("build_timestamp")
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None, False, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, bool(status), None


@functools.cache
def build_info(role: str | None = None) -> BuildInfo:
    sha, dirty, built = _revision()
    features = [name for name in ("helexa-torch", "helexa-echo", "agent-client-protocol") if _installed(name)]
    return BuildInfo(
        package_version=__version__,
        git_sha=sha[:12] if sha else "unknown",
        git_sha_long=sha,
        git_dirty=dirty,
        build_timestamp=built,
        python_version=platform.python_version(),
        platform=platform.platform(),
        torch_version=_installed("torch"),
        transformers_version=_installed("transformers"),
        features=features,
        role=role,
    )
