"""``helexa --role bench`` and ``helexa bench once``: the benchmark loop, with its read-only API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from helexa import config
from helexa.bench.api import create_api
from helexa.bench.store import Store
from helexa.bench.sweep import Bench
from helexa.settings import BenchSettings

log = logging.getLogger("helexa.bench")


def load(config_path: Path | None, overrides: dict[str, Any]) -> tuple[BenchSettings, Store]:
    settings = config.load(BenchSettings, config_path, overrides=overrides)
    return settings, Store(settings.bench.db_path)


async def until_stopped(bench: Bench, work) -> Any:
    """Run ``work`` with SIGTERM and SIGINT asking the bench to stop between runs."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, bench.stop)
    return await work


def once(config_path: Path | None, overrides: dict[str, Any]) -> int:
    """One sweep, then exit."""
    settings, store = load(config_path, overrides)
    bench = Bench(settings, store)
    recorded = asyncio.run(until_stopped(bench, bench.sweep()))
    log.info("recorded %d runs in %s", recorded, settings.bench.db_path)
    store.close()
    return 0


def run(config_path: Path | None, overrides: dict[str, Any]) -> int:
    """``helexa --role bench``: sweep forever; serve the read-only API alongside when enabled."""
    from helexa.runner import Listener
    from helexa.runner import run as run_listeners

    try:
        settings, store = load(config_path, overrides)
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 2
    bench = Bench(settings, store)
    log.info(
        "bench: %d targets, %d scenarios, database %s",
        len(settings.targets),
        len(bench.scenarios),
        settings.bench.db_path,
    )
    if not settings.api.enabled:
        asyncio.run(until_stopped(bench, bench.run_forever()))
        return 0

    @asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(bench.run_forever(), name="bench")
        try:
            yield
        finally:
            bench.stop()  # the run in progress finishes (and is recorded); no new one starts
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, settings.bench.request_timeout_s)
            store.close()

    return run_listeners(
        [Listener(create_api(store, [lifespan]), settings.api.listen, "bench API", http=settings.http)],
        drain_s=5,
    )
