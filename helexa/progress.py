"""Progress of long operations (model loads, bench sweeps), shown with rich.

On a terminal a live bar per task; otherwise (journald, files) a log line at each
stage change and every quarter of the way, so operators see what happens either way.
"""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

log = logging.getLogger("helexa.progress")


class ProgressBoard:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.last: dict[str, tuple[str, int]] = {}
        self.started: dict[str, float] = {}

    def start(self, key: str, description: str) -> None:
        self.started[key] = time.monotonic()
        if self.live:
            if not self.tasks:
                self.progress.start()
            self.tasks[key] = self.progress.add_task(description, total=1.0, stage="starting")
        log.info("%s: started", description)

    def update(self, key: str, stage: str, fraction: float | None) -> None:
        if self.live and key in self.tasks:
            self.progress.update(self.tasks[key], stage=stage, completed=fraction or 0.0)
        quarter = int((fraction or 0.0) * 4)
        if self.last.get(key) != (stage, quarter):
            self.last[key] = (stage, quarter)
            suffix = f" ({fraction:.0%})" if fraction is not None else ""
            log.info("%s: %s%s", key, stage, suffix)

    def finish(self, key: str, outcome: str) -> float:
        elapsed = time.monotonic() - self.started.pop(key, time.monotonic())
        self.last.pop(key, None)
        task = self.tasks.pop(key, None)
        if task is not None:
            self.progress.remove_task(task)
            if not self.tasks:
                self.progress.stop()
        log.info("%s: %s in %.1f s", key, outcome, elapsed)
        return elapsed
