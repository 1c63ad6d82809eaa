"""Reading the benchmark database: medians per build, the change against the previous build, charts."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any

from helexa.bench.store import Store, median
from helexa.bench.targets import gpu_label

METRICS = ("ttft_s", "decode_tps", "total_s", "aggregate_tps")


def builds_in_order(rows: list[dict[str, Any]]) -> list[str]:
    """Builds (git shas) in the order they were first measured."""
    first: dict[str, int] = {}
    for row in rows:
        first[row["git_sha"]] = min(first.get(row["git_sha"], row["id"]), row["id"])
    return sorted(first, key=first.__getitem__)


def summary(store: Store) -> list[dict[str, Any]]:
    """One row per (target, model, scenario): medians on the latest build, change since the previous."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.rows("ok = 1", limit=10**9):
        groups[(row["target_name"], row["model_id"], row["scenario_id"])].append(row)
    out = []
    for (target, model, scenario), rows in sorted(groups.items()):
        builds = builds_in_order(rows)
        latest = max(rows, key=lambda r: r["id"])["git_sha"]
        previous = builds[builds.index(latest) - 1] if builds.index(latest) > 0 else None
        now = [r for r in rows if r["git_sha"] == latest]
        item: dict[str, Any] = {
            "target_name": target,
            "model_id": model,
            "scenario_id": scenario,
            "prompt_size_approx": now[0]["prompt_size_approx"],
            "git_sha": latest,
            "previous_sha": previous,
            "prompt_tokens": median(r["prompt_tokens_actual"] for r in now),
            "samples": len(now),
            "gpu": gpu_label(json.loads(now[0]["gpus_json"] or "[]")),
        }
        before = [r for r in rows if r["git_sha"] == previous]
        for metric in METRICS:
            value = median(r[metric] for r in now)
            item[f"{metric}_median"] = value
            old = median(r[metric] for r in before) if before else None
            item[f"{metric}_change_pct"] = round(100 * (value - old) / old, 1) if value and old else None
        out.append(item)
    return out


def series(store: Store, target: str, model: str, scenario: str) -> list[dict[str, Any]]:
    """Median per build, in build order: the points of a chart."""
    rows = store.rows(
        "ok = 1 AND target_name = ? AND model_id = ? AND scenario_id = ?",
        (target, model, scenario),
        limit=10**9,
    )
    points = []
    for sha in builds_in_order(rows):
        of_build = [r for r in rows if r["git_sha"] == sha]
        points.append(
            {
                "git_sha": sha,
                "package_version": of_build[0]["package_version"],
                "build_timestamp": of_build[0]["build_timestamp"],
                "first_ts": min(r["ts"] for r in of_build),
                "samples": len(of_build),
                **{f"{m}_median": median(r[m] for r in of_build) for m in METRICS},
            }
        )
    return points


def dimensions(store: Store) -> dict[str, Any]:
    rows = store.rows(limit=10**9)
    builds = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        builds.setdefault(
            row["git_sha"],
            {
                "git_sha": row["git_sha"],
                "build_timestamp": row["build_timestamp"],
                "package_version": row["package_version"],
            },
        )
    return {
        "hosts": sorted({r["target_name"] for r in rows}),
        "models": sorted({r["model_id"] for r in rows}),
        "scenarios": sorted({r["scenario_id"] for r in rows}),
        "builds": list(builds.values()),
        "host_gpus": {r["target_name"]: gpu_label(json.loads(r["gpus_json"] or "[]")) for r in rows},
    }


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _change(value: float | None) -> str:
    return "" if value is None else f" ({value:+.1f}%)"


COLUMNS = [
    "target",
    "model",
    "scenario",
    "prompt tok",
    "TTFT (s)",
    "decode tok/s",
    "total (s)",
    "agg tok/s",
    "build",
    "n",
]


def table_rows(items: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            i["target_name"],
            i["model_id"],
            i["scenario_id"],
            _fmt(i["prompt_tokens"], 0) if i["prompt_tokens"] else f"~{i['prompt_size_approx']}",
            _fmt(i["ttft_s_median"], 3) + _change(i["ttft_s_change_pct"]),
            _fmt(i["decode_tps_median"], 1) + _change(i["decode_tps_change_pct"]),
            _fmt(i["total_s_median"], 3),
            _fmt(i["aggregate_tps_median"], 1),
            f"`{i['git_sha']}`",
            str(i["samples"]),
        ]
        for i in items
    ]


def markdown(items: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(items)]
    return "\n".join(lines) + "\n"


def rich_table(items: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title="helexa bench: medians on each target's latest build (change against the previous)")
    for column in COLUMNS:
        table.add_column(column)
    for row in table_rows(items):
        table.add_row(*[cell.strip("`") for cell in row])
    return table


def svg_chart(
    title: str, lines: dict[str, list[tuple[str, float]]], unit: str, width: int = 640, height: int = 240
) -> str:
    """A small line chart, one line per series, builds on the x axis; plain inline SVG."""
    builds = list(dict.fromkeys(label for points in lines.values() for label, _ in points))
    values = [v for points in lines.values() for _, v in points]
    if not builds or not values:
        return f"<p>{html.escape(title)}: no data</p>"
    top = max(values) * 1.1 or 1.0
    left, right, bottom, upper = 50, width - 10, height - 40, 25

    def x(label: str) -> float:
        return left + (right - left) * (builds.index(label) / max(1, len(builds) - 1))

    def y(value: float) -> float:
        return bottom - (bottom - upper) * value / top

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="15" font-size="13">{html.escape(title)} ({html.escape(unit)})</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{bottom}" stroke="#888"/>',
        f'<text x="5" y="{upper + 5}" font-size="10">{top:.3g}</text>',
        f'<text x="5" y="{bottom}" font-size="10">0</text>',
    ]
    for label in builds:
        parts.append(
            f'<text x="{x(label):.1f}" y="{bottom + 15}" font-size="10" text-anchor="middle">'
            f"{html.escape(label[:8])}</text>"
        )
    for n, (name, points) in enumerate(sorted(lines.items())):
        colour = colours[n % len(colours)]
        coords = " ".join(f"{x(label):.1f},{y(value):.1f}" for label, value in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for label, value in points:
            parts.append(
                f'<circle cx="{x(label):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}">'
                f"<title>{html.escape(name)} {html.escape(label)}: {value:.3g}</title></circle>"
            )
        parts.append(
            f'<text x="{right - 150}" y="{upper + 12 * (n + 1)}" font-size="10" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def html_report(store: Store) -> str:
    items = summary(store)
    sections = []
    for model in sorted({i["model_id"] for i in items}):
        ttft: dict[str, list[tuple[str, float]]] = {}
        decode: dict[str, list[tuple[str, float]]] = {}
        for item in (i for i in items if i["model_id"] == model):
            name = f"{item['target_name']} {item['scenario_id']}"
            for point in series(store, item["target_name"], model, item["scenario_id"]):
                if point["ttft_s_median"] is not None:
                    ttft.setdefault(name, []).append((point["git_sha"], point["ttft_s_median"]))
                if point["decode_tps_median"] is not None:
                    decode.setdefault(name, []).append((point["git_sha"], point["decode_tps_median"]))
        sections.append(
            f'<section class="model"><h2>{html.escape(model)}</h2>'
            f'<div class="chart">{svg_chart("time to first token per build", ttft, "s")}'
            f"{svg_chart('decode speed per build', decode, 'tokens/s')}</div></section>"
        )
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in row) + "</tr>"
        for row in table_rows(items)
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>helexa bench</title><style>'
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>"
        f"<h1>helexa bench</h1><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        + "".join(sections)
        + "</body></html>\n"
    )
