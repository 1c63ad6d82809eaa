"""Neuron start and stop: discovery, pre-warm in the background, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from neurons import running_neuron

from helexa.neuron.discovery import failure_reason, parse_cuda_version, parse_gpu_list, parse_health
from helexa.testing import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia-smi"


def test_nvidia_smi_device_list():
    devices, driver = parse_gpu_list((FIXTURES / "query-gpu-2x5090.csv").read_text())
    assert driver == "580.159"
    assert [(d.index, d.name, d.vram_total_mb, d.compute_capability) for d in devices] == [
        (0, "NVIDIA GeForce RTX 5090", 32607, "12.0"),
        (1, "NVIDIA GeForce RTX 5090", 32607, "12.0"),
    ]


def test_nvidia_smi_health_with_unsupported_fields():
    health = parse_health((FIXTURES / "health-2x5090.csv").read_text())
    assert (health[0].vram_used_mb, health[0].vram_free_mb, health[0].utilization_pct, health[0].temp_c) == (
        1024,
        31583,
        7,
        41,
    )
    assert (health[1].vram_used_mb, health[1].utilization_pct, health[1].temp_c) == (0, 0, 38)


def test_driver_mismatch_is_explained():
    reason = failure_reason((FIXTURES / "driver-mismatch.txt").read_text(), 18)
    assert reason.startswith("NVIDIA driver/library version mismatch")
    assert failure_reason("ok", 0) is None


def test_cuda_version_from_banner():
    assert parse_cuda_version((FIXTURES / "banner.txt").read_text()) == "13.0"


def test_cpu_only_host_reports_its_memory():
    with running_neuron(neuron={"memory_mb": 4096}) as (url, _):
        discovery = httpx.get(f"{url}/discovery").json()
    assert discovery["devices"][0]["kind"] in ("cpu", "cuda")
    if discovery["devices"][0]["kind"] == "cpu":
        assert discovery["devices"][0]["vram_total_mb"] == 4096
    assert "echo" in discovery["harnesses"]
    assert discovery["cpu_cores"] >= 1


def test_simulated_devices_are_reported_and_accounted():
    devices = [{"name": "sim-a", "memory_mb": 1000}, {"name": "sim-b", "memory_mb": 2000}]
    with running_neuron(simulated_devices=devices) as (url, _):
        discovery = httpx.get(f"{url}/discovery").json()
        assert [(d["name"], d["vram_total_mb"], d["kind"]) for d in discovery["devices"]] == [
            ("sim-a", 1000, "simulated"),
            ("sim-b", 2000, "simulated"),
        ]
        loaded = httpx.post(f"{url}/models/load", json={"model_id": "echo/a", "options": {"size_mb": 1500}})
        assert loaded.json()["model"]["devices"] == [1]  # the device with room
        both = httpx.post(
            f"{url}/models/load",
            json={"model_id": "echo/tp", "tensor_parallel": 2, "options": {"size_mb": 400}},
        )
        assert both.json()["model"]["devices"] == [0, 1]
        health = {d["index"]: d for d in httpx.get(f"{url}/health").json()["devices"]}
        assert health[0]["vram_used_mb"] == 400
        assert health[1]["vram_free_mb"] == 100


def test_prewarm_runs_after_the_listener_binds_and_survives_a_failing_entry():
    defaults = [
        {"model_id": "echo/first", "options": {"load_seconds": 0.4}},
        {"model_id": "echo/broken", "options": {"fail_load": "weights are corrupt"}},
        {"model_id": "echo/nope", "harness": "no-such-harness"},
        {"model_id": "echo/last"},
    ]
    with running_neuron(simulated_devices=[{"name": "s", "memory_mb": 4000}], default_models=defaults) as (
        url,
        _,
    ):
        early = httpx.get(f"{url}/health").json()["activation"]
        assert early["state"] == "pre_warming"
        deadline = time.monotonic() + 10
        while (activation := httpx.get(f"{url}/health").json()["activation"])["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert activation["completed"] == ["echo/first", "echo/last"]
        failed = {f["model_id"]: f["error"] for f in activation["failed"]}
        assert "weights are corrupt" in failed["echo/broken"]
        assert "no harness named 'no-such-harness'" in failed["echo/nope"]
        statuses = {m["id"]: m["status"] for m in httpx.get(f"{url}/models").json()}
        assert statuses["echo/first"] == statuses["echo/last"] == "loaded"
        assert statuses["echo/broken"] == "failed"


def test_sigterm_drains_unloads_every_model_and_exits_0(tmp_path):
    port = free_port()
    config = tmp_path / "neuron.toml"
    config.write_text(
        f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "echo"\ndrain_s = 2\n'
        "[harness.echo]\ntokens_per_second = 0\n"
        '[[simulated_devices]]\nname = "sim"\nmemory_mb = 1000\n'
        '[[default_models]]\nmodel_id = "echo/a"\n[[default_models]]\nmodel_id = "echo/b"\n'
    )
    env = {**os.environ, "HELEXA_LOG_LEVEL": "info", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "helexa", "--role", "neuron", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if len(httpx.get(f"http://127.0.0.1:{port}/models").json()) == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "neuron did not come up"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "unloaded echo/a" in output
    assert "unloaded echo/b" in output
    assert "neuron stopped" in output


@pytest.mark.parametrize("bad", ["neuron.listen = 3", "[neuron]\nlisten = 'nowhere'"])
def test_bad_config_exits_with_a_message(tmp_path, bad):
    config = tmp_path / "neuron.toml"
    config.write_text(bad)
    done = subprocess.run(
        [sys.executable, "-m", "helexa", "--role", "neuron", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "neuron.listen" in done.stderr
