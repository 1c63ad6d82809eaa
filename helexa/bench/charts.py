"""The dashboard's chart data: for a selection of hosts, models and scenarios, medians per build per target.

One chart group per (model, scenario); in each, one line per target (labelled with its GPUs)
and one point per build the target ran. Builds are in the order they were first measured,
which is the order they reached the fleet, and are shared by every line so that the x axis
means the same thing in every chart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from helexa.bench.report import METRICS
from helexa.bench.store import Store, median
from helexa.bench.targets import gpu_label
from helexa.errors import ApiError

# filter name -> the column it selects on
FILTERS = {"host": "target_name", "model": "model_id", "scenario": "scenario_id"}


def check_selection(store: Store, selection: dict[str, str | None]) -> None:
    """A filter naming something never measured is refused with a 400 that lists what was."""
    for name, column in FILTERS.items():
        value = selection.get(name)
        if value is None:
            continue
        found = store.db.execute(f"SELECT 1 FROM runs WHERE {column} = ? LIMIT 1", (value,)).fetchone()
        if found:
            continue
        measured = [r[0] for r in store.db.execute(f"SELECT DISTINCT {column} FROM runs ORDER BY 1")]
        known = f"measured {name}s: {', '.join(measured)}" if measured else "nothing has been measured yet"
        raise ApiError(400, f"unknown {name} {value!r} ({known})", param=name)


def build_of(row: dict[str, Any]) -> dict[str, Any]:
    stamp = row["build_timestamp"] or row["ts"]
    return {
        "git_sha": row["git_sha"],
        "package_version": row["package_version"],
        "build_timestamp": row["build_timestamp"],
        "first_ts": row["ts"],
        "date": (stamp or "")[:10],
    }


def point(sha: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if r["ok"]]
    return {
        "git_sha": sha,
        "samples": len(good),
        "failures": len(rows) - len(good),
        **{f"{m}_median": median(r[m] for r in good) for m in METRICS},
    }


def charts(store: Store, selection: dict[str, str | None]) -> dict[str, Any]:
    """``{"builds": [...], "charts": [{"model_id", "scenario_id", "lines": [{"label", "points"}]}]}``."""
    check_selection(store, selection)
    clauses, params = [], []
    for name, column in FILTERS.items():
        if selection.get(name) is not None:
            clauses.append(f"{column} = ?")
            params.append(selection[name])
    rows = store.rows(" AND ".join(clauses) or "1=1", params, limit=10**9)
    rows.sort(key=lambda r: r["id"])

    builds: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str], dict[str, dict[str, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    gpus: dict[str, str] = {}
    for row in rows:
        builds.setdefault(row["git_sha"], build_of(row))
        cells[(row["model_id"], row["scenario_id"])][row["target_name"]][row["git_sha"]].append(row)
        gpus[row["target_name"]] = gpu_label(json.loads(row["gpus_json"] or "[]"))  # the latest wins

    order = {sha: n for n, sha in enumerate(builds)}
    out = []
    for (model, scenario), targets in sorted(cells.items()):
        lines = []
        for target, by_build in sorted(targets.items()):
            gpu = gpus[target]
            lines.append(
                {
                    "target_name": target,
                    "gpu": gpu,
                    "label": target if gpu == "-" else f"{target} ({gpu})",
                    "points": [point(sha, by_build[sha]) for sha in sorted(by_build, key=order.__getitem__)],
                }
            )
        out.append({"model_id": model, "scenario_id": scenario, "lines": lines})
    return {"builds": list(builds.values()), "charts": out}
