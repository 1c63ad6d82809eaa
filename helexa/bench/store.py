"""The benchmark database: SQLite in WAL mode, one row per run, schema migrations kept in a table.

Every run is written in its own transaction, so a process killed mid-sweep leaves
only whole rows behind. Upgrades add migrations to `MIGRATIONS`; old data stays.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        target_name TEXT NOT NULL, target_kind TEXT NOT NULL, endpoint TEXT NOT NULL,
        hostname TEXT, driver_version TEXT, cuda_version TEXT, gpus_json TEXT,
        git_sha TEXT NOT NULL, git_sha_long TEXT, git_dirty INTEGER NOT NULL DEFAULT 0,
        package_version TEXT NOT NULL, build_timestamp TEXT,
        python_version TEXT, torch_version TEXT, transformers_version TEXT,
        features_json TEXT NOT NULL DEFAULT '[]',
        bench_version TEXT NOT NULL, bench_sha TEXT NOT NULL,
        model_id TEXT NOT NULL, harness TEXT NOT NULL DEFAULT '',
        capabilities_json TEXT NOT NULL DEFAULT '[]', devices_json TEXT NOT NULL DEFAULT '[]',
        scenario_id TEXT NOT NULL, prompt_size_approx INTEGER NOT NULL, prompt_tokens_actual INTEGER,
        max_tokens INTEGER NOT NULL, concurrency INTEGER NOT NULL DEFAULT 1,
        ttft_s REAL, decode_tps REAL, total_s REAL, completion_tokens INTEGER, aggregate_tps REAL,
        ok INTEGER NOT NULL, error TEXT
    )
    """,
    "CREATE INDEX idx_runs_cell ON runs (target_name, git_sha, model_id, scenario_id, ok)",
]


@dataclass
class Run:
    """One measured run, stamped with where and on which build it ran."""

    target_name: str
    target_kind: str
    endpoint: str
    git_sha: str
    package_version: str
    bench_version: str
    bench_sha: str
    model_id: str
    scenario_id: str
    prompt_size_approx: int
    max_tokens: int
    ok: bool
    concurrency: int = 1
    hostname: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    gpus_json: str | None = None
    git_sha_long: str | None = None
    git_dirty: bool = False
    build_timestamp: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    features_json: str = "[]"
    harness: str = ""
    capabilities_json: str = "[]"
    devices_json: str = "[]"
    prompt_tokens_actual: int | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    total_s: float | None = None
    completion_tokens: int | None = None
    aggregate_tps: float | None = None
    error: str | None = None
    ts: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    def migrate(self) -> None:
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "applied_at TEXT NOT NULL)"
            )
        done = {row[0] for row in self.db.execute("SELECT version FROM schema_migrations")}
        for version, statement in enumerate(MIGRATIONS, 1):
            if version in done:
                continue
            with self.db:  # each migration and its record in one transaction
                self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)",
                    (version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                )

    def add(self, run: Run) -> None:
        row = asdict(run)
        row["ok"], row["git_dirty"] = int(run.ok), int(run.git_dirty)
        columns = ", ".join(row)
        with self.db:
            self.db.execute(
                f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )

    def good_samples(self, target: str, sha: str, model: str, scenario: str) -> int:
        query = (
            "SELECT COUNT(*) FROM runs WHERE target_name=? AND git_sha=? AND model_id=? AND scenario_id=? "
            "AND ok=1"
        )
        return self.db.execute(query, (target, sha, model, scenario)).fetchone()[0]

    def rows(self, where: str = "1=1", params: Iterable[Any] = (), limit: int = 5000) -> list[dict[str, Any]]:
        query = f"SELECT * FROM runs WHERE {where} ORDER BY id DESC LIMIT ?"
        return [dict(r) for r in self.db.execute(query, (*params, limit))]

    def close(self) -> None:
        self.db.close()


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
