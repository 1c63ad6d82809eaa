"""Shared pieces of the benchmark scripts: start helexa processes, read their CPU time, summarise."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def serving(
    command: list[str], health_url: str, env: dict[str, str] | None = None, timeout: float = 120, **popen
) -> Iterator[subprocess.Popen]:
    """Start ``command`` and wait until ``health_url`` answers 200; stop it on the way out."""
    process = subprocess.Popen(command, env=env, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{Path(command[0]).name} {' '.join(command[1:3])} did not start")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def helexa_process(
    role: str, config: Path, health_url: str, env: dict[str, str] | None = None, timeout: float = 120
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """Start ``helexa --role ROLE --config CONFIG`` and wait until ``health_url`` answers 200."""
    command = [
        sys.executable,
        "-m",
        "helexa",
        "--role",
        role,
        "--config",
        str(config),
        "--log-level",
        "warning",
    ]
    return serving(command, health_url, {**os.environ, **(env or {})}, timeout)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
