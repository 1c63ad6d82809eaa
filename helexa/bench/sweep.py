"""The benchmark loop: measure every loaded model on every target until each build has enough samples.

For each (target, build, model, scenario) cell it runs until there are
``samples_per_version`` good samples, with one unrecorded warm-up before a cell's
first sample. A complete cell is skipped, so a sweep costs nothing until a target
runs a new build. An unreachable target is logged and skipped; a stop request is
honoured between runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict

from helexa import __version__
from helexa.bench.scenarios import Scenario, measure, scenarios
from helexa.bench.store import Run, Store
from helexa.bench.targets import Stamp, Target, TargetModel
from helexa.buildinfo import build_info
from helexa.settings import BenchSettings

log = logging.getLogger("helexa.bench")


class Bench:
    def __init__(self, settings: BenchSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.scenarios = scenarios(settings.scenarios)
        self.stopping = asyncio.Event()
        self.runs = 0

    def stop(self) -> None:
        self.stopping.set()

    async def sweep(self) -> int:
        """One pass over every target; returns the number of rows recorded."""
        recorded = 0
        for target_settings in self.settings.targets:
            if self.stopping.is_set():
                break
            target = Target(target_settings, self.settings.bench.request_timeout_s)
            try:
                try:
                    stamp, models = await target.stamp(), await target.models()
                except Exception as exc:
                    log.warning(
                        "target %s (%s) is unreachable, skipped this sweep: %s",
                        target_settings.name,
                        target_settings.endpoint,
                        exc,
                    )
                    continue
                for model in models:
                    for scenario in self.scenarios:
                        recorded += await self.fill(target, stamp, model, scenario)
            finally:
                await target.close()
        return recorded

    async def fill(self, target: Target, stamp: Stamp, model: TargetModel, scenario: Scenario) -> int:
        name = target.settings.name
        need = self.settings.bench.samples_per_version - self.store.good_samples(
            name, stamp.git_sha, model.id, scenario.id
        )
        if need <= 0 or self.stopping.is_set():
            return 0
        fixed = target.settings.kind != "openai"
        if need == self.settings.bench.samples_per_version:
            log.info("%s %s %s on build %s: warm-up", name, model.id, scenario.id, stamp.git_sha)
            await measure(target.http, target.chat_path, model.id, scenario, fixed)  # not recorded
        recorded = 0
        for _ in range(need):
            if self.stopping.is_set():
                break
            result = await asyncio.wait_for(
                measure(target.http, target.chat_path, model.id, scenario, fixed),
                self.settings.bench.request_timeout_s,
            )
            self.store.add(self.row(target, stamp, model, scenario, result))
            recorded += 1
            self.runs += 1
            summary = (
                f"ttft {result.ttft_s:.3f}s decode {result.decode_tps or 0:.1f} tok/s"
                if result.ok
                else (f"failed: {result.error}")
            )
            log.info("%s %s %s: %s", name, model.id, scenario.id, summary)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.bench.iteration_pause_s)
            except TimeoutError:
                pass
        return recorded

    def row(self, target: Target, stamp: Stamp, model: TargetModel, scenario: Scenario, result) -> Run:
        me = build_info("bench")
        return Run(
            target_name=target.settings.name,
            target_kind=target.settings.kind,
            endpoint=target.settings.endpoint,
            bench_version=__version__,
            bench_sha=me.git_sha,
            model_id=model.id,
            harness=model.harness,
            capabilities_json=json.dumps(model.capabilities),
            devices_json=json.dumps(model.devices),
            scenario_id=scenario.id,
            prompt_size_approx=scenario.prompt_size,
            max_tokens=scenario.max_tokens,
            concurrency=scenario.concurrency,
            prompt_tokens_actual=result.prompt_tokens,
            ttft_s=result.ttft_s,
            decode_tps=result.decode_tps,
            total_s=result.total_s,
            completion_tokens=result.completion_tokens,
            aggregate_tps=result.aggregate_tps,
            ok=result.ok,
            error=result.error,
            **asdict(stamp),
        )

    async def run_forever(self) -> None:
        while not self.stopping.is_set():
            recorded = await self.sweep()
            log.info(
                "sweep done: %d runs recorded; next in %.0f s", recorded, self.settings.bench.sweep_interval_s
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.bench.sweep_interval_s)
            except TimeoutError:
                pass
