"""The bench role against a neuron with the echo harness at a known token rate, and its reports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser

import httpx
import msgspec
import pytest
from neurons import running_neuron

from helexa.bench import report
from helexa.bench.api import create_api
from helexa.bench.store import Run, Store
from helexa.bench.sweep import Bench
from helexa.buildinfo import build_info
from helexa.settings import BenchSettings
from helexa.testing import free_port, scrape, serve_app

RATE = 200.0


def settings(db, *targets, **bench):
    return msgspec.convert(
        {
            "bench": {"db_path": str(db), "samples_per_version": 2, "iteration_pause_s": 0, **bench},
            "scenarios": {"prompt_sizes": [16], "max_tokens": 40, "concurrency": 3},
            "targets": [{"name": name, "endpoint": url, "kind": kind} for name, url, kind in targets],
        },
        BenchSettings,
    )


@pytest.fixture
def neuron():
    with running_neuron(
        simulated_devices=[{"name": "sim-gpu", "memory_mb": 1000}],
        harness={"echo": {"tokens_per_second": RATE}},
    ) as (url, _):
        httpx.post(f"{url}/models/load", json={"model_id": "echo/bench"}).raise_for_status()
        yield url


@pytest.fixture
def fresh_build(monkeypatch):
    def set_sha(sha):
        monkeypatch.setenv("HELEXA_BUILD_SHA", sha)
        build_info.cache_clear()

    set_sha("a" * 40)
    yield set_sha
    build_info.cache_clear()


def test_sweeps_record_stamped_rows_skip_complete_cells_and_resume_on_a_new_build(
    tmp_path, neuron, fresh_build
):
    store = Store(tmp_path / "bench.sqlite")
    bench = Bench(
        settings(
            tmp_path / "bench.sqlite", ("n1", neuron, "neuron"), ("gone", "http://127.0.0.1:9", "neuron")
        ),
        store,
    )
    assert asyncio.run(bench.sweep()) == 4  # two scenarios x two samples; the unreachable target skipped
    rows = store.rows()
    assert {r["git_sha"] for r in rows} == {"a" * 12}
    assert {r["model_id"] for r in rows} == {"echo/bench"}
    assert {r["scenario_id"] for r in rows} == {"chat:16", "concurrency:3"}
    assert all(r["ok"] for r in rows)
    assert {r["hostname"] for r in rows} and json.loads(rows[0]["gpus_json"]) == ["sim-gpu"]
    for row in rows:
        assert abs(row["decode_tps"] - RATE) / RATE < 0.1, row["decode_tps"]
        assert row["completion_tokens"] == 40 * (3 if row["scenario_id"] == "concurrency:3" else 1)
    # warm-ups ran but were not recorded: 2 cells x (1 warm-up + 2 samples); concurrent ones are 3 streams
    assert (
        scrape(f"{neuron}/metrics", "helexa_neuron_requests_total", model="echo/bench", outcome="ok") == 3 + 9
    )
    assert asyncio.run(bench.sweep()) == 0  # complete cells are skipped
    fresh_build("b" * 40)
    assert asyncio.run(bench.sweep()) == 4  # a new build needs its own samples
    assert {r["git_sha"] for r in store.rows()} == {"a" * 12, "b" * 12}


def test_killed_mid_run_leaves_a_consistent_database(tmp_path):
    port = free_port()
    neuron_config = tmp_path / "neuron.toml"
    neuron_config.write_text(
        f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "echo"\n'
        "[harness.echo]\ntokens_per_second = 100\n"
        '[[simulated_devices]]\nname = "s"\nmemory_mb = 1000\n'
        '[[default_models]]\nmodel_id = "echo/kill"\n'
    )
    db = tmp_path / "bench.sqlite"
    bench_config = tmp_path / "bench.toml"
    bench_config.write_text(
        f'[bench]\ndb_path = "{db}"\nsamples_per_version = 50\niteration_pause_s = 0\n'
        "[scenarios]\nprompt_sizes = [16]\nmax_tokens = 20\nconcurrency = 0\n"
        f'[[targets]]\nname = "n"\nendpoint = "http://127.0.0.1:{port}"\n'
    )
    neuron_process = subprocess.Popen(
        [sys.executable, "-m", "helexa", "--role", "neuron", "--config", str(neuron_config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/models").json():
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        bench = subprocess.Popen(
            [sys.executable, "-m", "helexa", "bench", "once", "--config", str(bench_config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while runs_recorded(db) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(bench.pid, signal.SIGKILL)
        bench.wait()
    finally:
        neuron_process.terminate()
        neuron_process.wait()
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = connection.execute("SELECT ok, ttft_s, decode_tps, completion_tokens FROM runs").fetchall()
    assert 3 <= len(rows) < 50
    assert all(ok == 1 and ttft and decode and tokens == 20 for ok, ttft, decode, tokens in rows)


def runs_recorded(db) -> int:
    """Runs the bench has committed so far; 0 before it has created its schema."""
    if not db.exists():
        return 0
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # the file exists but the tables are not there yet
        return 0


def hand_made(path) -> Store:
    store = Store(path)
    common = dict(
        target_kind="neuron",
        endpoint="http://x",
        package_version="0.1.0",
        bench_version="0.1.0",
        bench_sha="x",
        prompt_size_approx=128,
        max_tokens=256,
        ok=True,
        gpus_json='["NVIDIA GeForce RTX 4090"]',
    )
    for sha, ttfts, decodes in (
        ("old", [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]),
        ("new", [1.0, 2.0], [30.0, 50.0]),
    ):
        for ttft, decode in zip(ttfts, decodes, strict=True):
            for model in ("m/one", "m/two"):
                store.add(
                    Run(
                        target_name="t",
                        git_sha=sha,
                        model_id=model,
                        scenario_id="chat:128",
                        ttft_s=ttft,
                        decode_tps=decode,
                        total_s=ttft + 1,
                        **common,
                    )
                )
    store.add(
        Run(
            target_name="t",
            git_sha="new",
            model_id="m/one",
            scenario_id="chat:128",
            error="boom",
            **{**common, "ok": False},
        )
    )
    return store


def test_report_medians_and_change_on_a_hand_made_database(tmp_path):
    items = {i["model_id"]: i for i in report.summary(hand_made(tmp_path / "db.sqlite"))}
    one = items["m/one"]
    assert one["git_sha"] == "new" and one["previous_sha"] == "old" and one["samples"] == 2
    assert one["ttft_s_median"] == 1.5  # even count: the mean of the two middle values
    assert one["decode_tps_median"] == 40.0
    assert one["decode_tps_change_pct"] == 100.0  # 20 -> 40
    assert one["ttft_s_change_pct"] == -25.0
    assert one["gpu"] == "RTX 4090"
    markdown = report.markdown(list(items.values()))
    assert "| t | m/one | chat:128 | ~128 | 1.500 (-25.0%) | 40.0 (+100.0%) |" in markdown


class Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.models = 0
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br", "line", "circle", "polyline"):
            self.stack.append(tag)
        self.models += tag == "section" and ("class", "model") in attrs
        self.svgs += tag == "svg"

    def handle_endtag(self, tag):
        if tag in ("line", "circle", "polyline"):
            return
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_html_report_is_well_formed_with_charts_for_each_model(tmp_path):
    page = report.html_report(hand_made(tmp_path / "db.sqlite"))
    parser = Sections()
    parser.feed(page)
    assert parser.stack == []
    assert parser.models == 2 and parser.svgs == 4  # TTFT and decode speed, per model
    assert "<polyline" in page and "m/two" in page


def test_report_command(tmp_path):
    from click.testing import CliRunner

    from helexa.cli import cli

    hand_made(tmp_path / "db.sqlite").close()
    result = CliRunner().invoke(
        cli, ["bench", "report", "--db", str(tmp_path / "db.sqlite"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert {i["model_id"] for i in json.loads(result.output)} == {"m/one", "m/two"}
    out = tmp_path / "report.html"
    assert (
        CliRunner()
        .invoke(
            cli,
            [
                "bench",
                "report",
                "--db",
                str(tmp_path / "db.sqlite"),
                "--format",
                "html",
                "--output",
                str(out),
            ],
        )
        .exit_code
        == 0
    )
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_api_routes(tmp_path):
    store = hand_made(tmp_path / "db.sqlite")
    with serve_app(create_api(store)) as url:
        assert httpx.get(f"{url}/api/health").json() == {"status": "ok", "run_count": 11}
        dimensions = httpx.get(f"{url}/api/dimensions").json()
        assert dimensions["models"] == ["m/one", "m/two"] and [
            b["git_sha"] for b in dimensions["builds"]
        ] == ["old", "new"]
        assert len(httpx.get(f"{url}/api/summary").json()) == 2
        points = httpx.get(
            f"{url}/api/series", params={"host": "t", "model": "m/one", "scenario": "chat:128"}
        ).json()
        assert [p["git_sha"] for p in points] == ["old", "new"]
        assert [p["decode_tps_median"] for p in points] == [20.0, 40.0]
        failed = httpx.get(f"{url}/api/runs", params={"ok": "false"}).json()
        assert [r["error"] for r in failed] == ["boom"]
        assert len(httpx.get(f"{url}/api/runs", params={"limit": 3}).json()) == 3
        assert httpx.get(f"{url}/api/runs", params={"limit": 0}).status_code == 400


def test_migrations_are_recorded_and_reopening_keeps_data(tmp_path):
    hand_made(tmp_path / "db.sqlite").close()
    again = Store(tmp_path / "db.sqlite")
    assert again.db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == 2
    assert again.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 11
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
