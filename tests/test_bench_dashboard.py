"""The bench dashboard: its chart API, and the page itself in a real headless Chromium.

The browser tests read a database filled by real sweeps of the bench against echo neurons
running at two known token rates, over three builds, and load the page from a
``helexa --role bench`` process, as an operator opening ``http://bench-host:13132/`` would.
Chromium comes from Debian's ``chromium`` and ``chromium-driver`` (``make browser``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from neurons import running_neuron

from helexa.bench.api import create_api
from helexa.bench.store import Run, Store
from helexa.bench.sweep import Bench
from helexa.buildinfo import build_info
from helexa.settings import BenchSettings
from helexa.testing import free_port, serve_app

FAST, SLOW = 300.0, 100.0
MODEL, SCENARIO = "echo/dash", "chat:16"
# (git sha, build time): three builds, in the order they reach the fleet
BUILDS = [
    ("c0ffee01" + "1" * 32, "2026-11-01T09:00:00Z"),
    ("c0ffee02" + "2" * 32, "2026-11-15T09:00:00Z"),
    ("c0ffee03" + "3" * 32, "2026-12-01T09:00:00Z"),
]


# ---- the chart API, over a hand-made database --------------------------------------------------


def add(store: Store, target: str, sha: str, ok: bool = True, **values) -> None:
    gpus = '["NVIDIA GeForce RTX 4090"]' if target == "t1" else None
    store.add(
        Run(
            target_name=target,
            target_kind="neuron",
            endpoint="http://x",
            git_sha=sha,
            package_version="0.1.0",
            bench_version="0.1.0",
            bench_sha="x",
            model_id=values.pop("model", "m/a"),
            scenario_id=values.pop("scenario", "chat:128"),
            prompt_size_approx=128,
            max_tokens=64,
            ok=ok,
            gpus_json=gpus,
            build_timestamp="2026-10-01T00:00:00Z" if sha == "old" else None,
            **values,
        )
    )


@pytest.fixture
def charted(tmp_path) -> Iterator[str]:
    store = Store(tmp_path / "db.sqlite")
    add(store, "t1", "old", ttft_s=0.2, decode_tps=10.0, total_s=2.0)
    add(store, "t1", "old", ttft_s=0.4, decode_tps=30.0, total_s=4.0)
    add(store, "t2", "new", ttft_s=0.1, decode_tps=50.0, total_s=1.0)  # t2 meets "new" first...
    add(store, "t2", "old", ttft_s=0.3, decode_tps=40.0, total_s=3.0)  # ...then "old"
    add(store, "t1", "new", ttft_s=0.1, decode_tps=60.0, total_s=1.5)
    add(store, "t1", "new", ok=False, error="boom")
    add(store, "t1", "new", scenario="chat:4096", ttft_s=1.0, decode_tps=20.0, total_s=9.0)
    with serve_app(create_api(store)) as url:
        yield url
    store.close()


def test_charts_group_by_model_and_scenario_with_a_line_per_target_in_build_order(charted):
    data = httpx.get(f"{charted}/api/charts").json()
    assert [b["git_sha"] for b in data["builds"]] == ["old", "new"]
    assert data["builds"][0]["date"] == "2026-10-01"  # the build's own time when it has one
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", data["builds"][1]["date"])  # else when it was first measured
    assert [(c["model_id"], c["scenario_id"]) for c in data["charts"]] == [
        ("m/a", "chat:128"),
        ("m/a", "chat:4096"),
    ]
    t1, t2 = data["charts"][0]["lines"]
    assert (t1["label"], t2["label"]) == ("t1 (RTX 4090)", "t2")
    assert [p["git_sha"] for p in t1["points"]] == ["old", "new"]
    assert [p["git_sha"] for p in t2["points"]] == ["old", "new"]  # x order, not the order t2 met them
    old, new = t1["points"]
    assert (old["samples"], old["failures"], old["ttft_s_median"], old["decode_tps_median"]) == (
        2,
        0,
        pytest.approx(0.3),
        20.0,
    )
    assert (new["samples"], new["failures"], new["total_s_median"]) == (1, 1, 1.5)


def test_charts_filters_and_their_errors(charted):
    only_t2 = httpx.get(f"{charted}/api/charts", params={"host": "t2"}).json()
    assert [[line["target_name"] for line in c["lines"]] for c in only_t2["charts"]] == [["t2"]]
    assert [b["git_sha"] for b in only_t2["builds"]] == ["new", "old"]  # first measured on t2
    wide = httpx.get(f"{charted}/api/charts", params={"scenario": "chat:4096"}).json()
    assert [b["git_sha"] for b in wide["builds"]] == ["new"]
    refused = httpx.get(f"{charted}/api/charts", params={"model": "m/nope"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "model" and "'m/nope'" in error["message"] and "m/a" in error["message"]
    assert httpx.get(f"{charted}/api/health").status_code == 200  # and it keeps serving


def test_empty_database_and_the_dashboard_files(tmp_path):
    store = Store(tmp_path / "empty.sqlite")
    with serve_app(create_api(store)) as url:
        assert httpx.get(f"{url}/api/charts").json() == {"builds": [], "charts": []}
        refused = httpx.get(f"{url}/api/charts", params={"host": "h"}).json()["error"]
        assert "nothing has been measured yet" in refused["message"] and refused["param"] == "host"
        page = httpx.get(f"{url}/")
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="dashboard/dashboard.js">' in page.text
        script = httpx.get(f"{url}/dashboard/dashboard.js")
        assert script.headers["content-type"].startswith("text/javascript") and "api/charts" in script.text
        assert httpx.get(f"{url}/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
        unknown = httpx.get(f"{url}/dashboard/secrets.txt")
        assert unknown.status_code == 404 and "dashboard.js" in unknown.json()["error"]["message"]
    store.close()


# ---- the page in a browser ---------------------------------------------------------------------


def bench_settings(db: Path, *targets: tuple[str, str]) -> BenchSettings:
    return msgspec.convert(
        {
            "bench": {"db_path": str(db), "samples_per_version": 2, "iteration_pause_s": 0},
            "scenarios": {"prompt_sizes": [16], "max_tokens": 40, "concurrency": 0},
            "targets": [{"name": name, "endpoint": url} for name, url in targets],
        },
        BenchSettings,
    )


def sweep(db: Path, *targets: tuple[str, str]) -> int:
    store = Store(db)
    try:
        return asyncio.run(Bench(bench_settings(db, *targets), store).sweep())
    finally:
        store.close()


def echo_neuron(gpu: str, rate: float):
    return running_neuron(
        simulated_devices=[{"name": gpu, "memory_mb": 1000}],
        harness={"echo": {"tokens_per_second": rate}},
        default_models=[{"model_id": MODEL}],
    )


@contextlib.contextmanager
def on_build(sha: str, when: str) -> Iterator[None]:
    """The in-process neurons report this build on /version, as a redeployed neuron would."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HELEXA_BUILD_SHA", sha)
        patch.setenv("HELEXA_BUILD_TIME", when)
        build_info.cache_clear()
        try:
            yield
        finally:
            build_info.cache_clear()


def wait_loaded(url: str) -> None:
    deadline = time.monotonic() + 20
    while not any(m["status"] == "loaded" for m in httpx.get(f"{url}/models").json()):
        assert time.monotonic() < deadline, "the echo model did not load"
        time.sleep(0.05)


@contextlib.contextmanager
def bench_process(folder: Path, db: Path) -> Iterator[str]:
    """``helexa --role bench`` with no targets: just its read-only API over ``db``."""
    port = free_port()
    config = folder / f"bench-{port}.toml"
    config.write_text(f'[bench]\ndb_path = "{db}"\n[api]\nlisten = "127.0.0.1:{port}"\n')
    log = folder / f"bench-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "helexa", "--role", "bench", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the bench exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the bench API did not answer: {log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health").status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip(
            "no headless Chromium: `make browser` installs Debian's chromium and chromium-driver "
            "(it needs apt-get and root or passwordless sudo)"
        )
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.implicitly_wait(0)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """Three builds measured on two targets by the bench's own sweep."""
    db = tmp_path_factory.mktemp("dashboard") / "bench.sqlite"
    with echo_neuron("sim-fast", FAST) as (fast, _), echo_neuron("sim-slow", SLOW) as (slow, _):
        wait_loaded(fast)
        wait_loaded(slow)
        for sha, when in BUILDS:
            with on_build(sha, when):
                assert sweep(db, ("fast", fast), ("slow", slow)) == 4  # 2 targets x 2 samples
    return db


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, filled) -> Iterator[str]:
    with bench_process(tmp_path_factory.mktemp("bench"), filled) as url:
        yield url


def wait_for(chrome, predicate, what: str, timeout: float = 15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, timeout, poll_frequency=0.05).until(
        lambda _: predicate(), message=f"the page never showed {what}"
    )


def css(chrome, selector: str) -> list:
    return chrome.find_elements("css selector", selector)


def hover_text(chrome, point) -> str:
    from selenium.webdriver import ActionChains

    ActionChains(chrome).move_to_element(point).perform()
    tooltip = css(chrome, "#tooltip")[0]
    wait_for(chrome, tooltip.is_displayed, "a tooltip")
    return tooltip.text


@pytest.mark.slow
def test_the_page_charts_every_build_with_medians_on_hover_and_the_latest_table(browser, dashboard, tmp_path):
    browser.get(f"{dashboard}/")
    wait_for(browser, lambda: css(browser, "section.chart-group"), "a chart")
    models = [o.text for o in css(browser, "select[name=model] option")]
    hosts = [o.text for o in css(browser, "select[name=host] option")]
    assert models == ["all models", MODEL] and hosts == ["all hosts", "fast (sim-fast)", "slow (sim-slow)"]
    assert "12 runs · 3 builds · 1 model · 2 hosts" in css(browser, "#overview")[0].text

    group = css(browser, f'section.chart-group[data-model="{MODEL}"][data-scenario="{SCENARIO}"]')[0]
    charts = group.find_elements("css selector", "svg.chart")
    assert [c.get_attribute("data-metric") for c in charts] == ["ttft_s", "decode_tps", "total_s"]
    assert "Decode speed (tokens/s)" in charts[1].text
    labels = [
        [span.get_attribute("textContent") for span in label.find_elements("css selector", "tspan")]
        for label in charts[1].find_elements("css selector", "a.build text")
    ]
    assert labels == [[sha[:8], when[:10]] for sha, when in BUILDS]  # short sha and date, in build order

    for line, rate in (("fast (sim-fast)", FAST), ("slow (sim-slow)", SLOW)):
        points = charts[1].find_elements("css selector", f'circle.point[data-line="{line}"]')
        assert [p.get_attribute("data-build") for p in points] == [sha[:12] for sha, _ in BUILDS]
        xs = [float(p.get_attribute("cx")) for p in points]
        assert xs == sorted(xs)
        text = hover_text(browser, points[-1])
        assert text.startswith(line) and f"build {BUILDS[-1][0][:8]} · 2026-12-01" in text
        assert "2 samples" in text
        value = float(re.search(r"median ([\d.]+) tokens/s", text).group(1))
        assert abs(value - rate) / rate < 0.25, text  # the echo harness's pace, give or take the timer
    fast_dot, slow_dot = (
        charts[1].find_elements("css selector", f'circle.point[data-line="{line}"]')[-1]
        for line in ("fast (sim-fast)", "slow (sim-slow)")
    )
    assert float(fast_dot.get_attribute("cy")) < float(slow_dot.get_attribute("cy"))  # faster is higher

    rows = css(browser, "#latest tbody tr")
    assert [r.get_attribute("data-target") for r in rows] == ["fast", "slow"]
    decode = float(rows[1].find_element("css selector", 'td[data-metric="decode_tps"]').text.split()[0])
    assert abs(decode - SLOW) / SLOW < 0.25
    assert rows[1].find_elements("css selector", "td")[-1].text == "2"
    shot = tmp_path / "bench-dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")

    rows[1].find_element("css selector", "a").click()  # the latest build's raw runs
    wait_for(browser, lambda: "/api/runs?" in browser.current_url, "the raw runs")
    runs = json.loads(browser.find_element("tag name", "body").text)
    assert len(runs) == 2
    assert {(r["target_name"], r["git_sha"]) for r in runs} == {("slow", BUILDS[-1][0][:12])}


@pytest.mark.slow
def test_filters_narrow_the_charts_and_stay_in_the_url(browser, dashboard):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{dashboard}/")
    wait_for(browser, lambda: css(browser, "circle.point"), "points")
    Select(css(browser, "select[name=host]")[0]).select_by_value("slow")
    wait_for(browser, lambda: len(css(browser, "#latest tbody tr")) == 1, "one table row")
    assert {p.get_attribute("data-line") for p in css(browser, "circle.point")} == {"slow (sim-slow)"}
    assert len(css(browser, "circle.point")) == 3 * 3  # three charts, one point per build
    assert "host=slow" in browser.current_url
    browser.refresh()
    wait_for(browser, lambda: css(browser, "circle.point"), "points after a reload")
    assert Select(css(browser, "select[name=host]")[0]).first_selected_option.text == "slow (sim-slow)"
    assert {p.get_attribute("data-line") for p in css(browser, "circle.point")} == {"slow (sim-slow)"}


@pytest.mark.slow
def test_a_bad_query_shows_the_apis_error_and_the_page_recovers(browser, dashboard):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{dashboard}/?model=nope/never")
    message = css(browser, "#message")[0]
    wait_for(browser, message.is_displayed, "an error")
    assert message.get_attribute("class") == "error"
    assert "unknown model 'nope/never'" in message.text and MODEL in message.text
    assert css(browser, "section.chart-group") == [] and not css(browser, "#latest")[0].is_displayed()
    select = Select(css(browser, "select[name=model]")[0])
    assert select.first_selected_option.text == "nope/never (not measured)"
    select.select_by_value(MODEL)
    wait_for(browser, lambda: css(browser, "section.chart-group"), "the charts")
    assert not message.is_displayed()


@pytest.mark.slow
def test_empty_then_the_first_sweep_appears_without_a_reload_across_origins(browser, dashboard, tmp_path):
    db = tmp_path / "bench.sqlite"
    with bench_process(tmp_path, db) as empty:
        browser.get(f"{empty}/?refresh=1")
        message = css(browser, "#message")[0]
        wait_for(browser, message.is_displayed, "the empty state")
        assert message.get_attribute("class") == "empty" and "Nothing has been measured yet" in message.text
        assert not css(browser, "#latest")[0].is_displayed()
        browser.execute_script("window.stayed = true")
        with echo_neuron("sim-fast", FAST) as (url, _), on_build(*BUILDS[0]):
            wait_loaded(url)
            assert sweep(db, ("fast", url)) == 2
        wait_for(browser, lambda: css(browser, "section.chart-group"), "the first sweep")
        assert not message.is_displayed() and len(css(browser, "#latest tbody tr")) == 1
        assert len(css(browser, 'svg.chart[data-metric="decode_tps"] circle.point')) == 1
        assert browser.execute_script("return window.stayed") is True  # refreshed in place

        # The same page, served by one bench, reading another bench's API (its CORS allows it).
        browser.get(f"{empty}/?api={dashboard}")
        wait_for(browser, lambda: len(css(browser, "#latest tbody tr")) == 2, "the other bench's table")
        assert "12 runs" in css(browser, "#overview")[0].text
