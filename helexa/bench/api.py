"""The bench role's read-only HTTP API (default port 13132): the dashboard page, and the JSON it reads.

JSON: health, dimensions, summary, series, charts, runs. ``GET /`` serves the dashboard, a
static page shipped in ``helexa/bench/dashboard`` that draws its charts from that JSON.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Response, get
from litestar.config.cors import CORSConfig

from helexa.asgi import error_response
from helexa.bench import charts as chart_data
from helexa.bench import report, web
from helexa.bench.store import Store
from helexa.errors import ApiError

MAX_RUNS = 5000


def create_api(store: Store, lifespan: list | None = None) -> Litestar:
    files = web.load()  # read once: a missing file stops the role at start, not a user at the page

    @get("/", sync_to_thread=False)
    def page() -> Response[bytes]:
        return web.response(files, "index.html")

    @get("/dashboard/{name:str}", sync_to_thread=False)
    def asset(name: str) -> Response[bytes]:
        return web.response(files, name)

    @get("/api/health", sync_to_thread=False)
    def health() -> dict[str, Any]:
        count = store.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        return {"status": "ok", "run_count": count}

    @get("/api/dimensions", sync_to_thread=False)
    def dimensions() -> dict[str, Any]:
        return report.dimensions(store)

    @get("/api/summary", sync_to_thread=False)
    def summary() -> list[dict[str, Any]]:
        return report.summary(store)

    @get("/api/series", sync_to_thread=False)
    def series(host: str, model: str, scenario: str) -> list[dict[str, Any]]:
        return report.series(store, host, model, scenario)

    @get("/api/charts", sync_to_thread=False)
    def charts(
        host: str | None = None, model: str | None = None, scenario: str | None = None
    ) -> dict[str, Any]:
        return chart_data.charts(store, {"host": host, "model": model, "scenario": scenario})

    @get("/api/runs", sync_to_thread=False)
    def runs(
        host: str | None = None,
        model: str | None = None,
        scenario: str | None = None,
        sha: str | None = None,
        ok: bool | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_RUNS:
            raise ApiError(400, f"limit must be between 1 and {MAX_RUNS}", param="limit")
        clauses, params = [], []
        for column, value in (
            ("target_name", host),
            ("model_id", model),
            ("scenario_id", scenario),
            ("git_sha", sha),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if ok is not None:
            clauses.append("ok = ?")
            params.append(int(ok))
        return store.rows(" AND ".join(clauses) or "1=1", params, limit)

    return Litestar(
        [page, asset, health, dimensions, summary, series, charts, runs],
        lifespan=lifespan or [],
        cors_config=CORSConfig(allow_origins=["*"], allow_methods=["GET"]),
        exception_handlers={Exception: error_response},
        logging_config=None,
        openapi_config=None,
    )
