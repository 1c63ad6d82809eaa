"""The benchmark scripts still run and print the JSON docs/benchmarks.md is built from (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_fleet_sim_reports_both_strategies():
    result = run("fleet_sim.py", "--requests", "60", "--neurons", "3", "--models", "12")
    for strategy in ("lru", "priority"):
        figures = result["results"][strategy]
        assert figures["requests"] == 60 and figures["failed"] == 0
        assert 0 < figures["hit_rate"] < 1
        assert figures["decision_ms"]["p99"] > 0


@pytest.mark.slow
def test_neuron_serving_compares_http_with_in_process():
    result = run("neuron_serving.py", "--tokens", "32", "--concurrency", "1", "4")
    for streams in ("1", "4"):
        row = result["streams"][streams]
        assert row["http"]["chunks"] > 0 and row["in_process"]["chunks"] > 0
        assert row["cpu_ratio_http_over_in_process"] > 0


@pytest.mark.slow
def test_a_bf16_checkpoint_loads_in_little_more_memory_than_its_weights():
    """Weights stream into bfloat16 as they are read: no float32 copy, no second copy (issue 14)."""
    result = run("model_load.py", "--mb", "200", "--only", "safetensors_bf16")
    now = result["safetensors_bf16"]["now"]
    assert now["weights_mb"] > 150
    assert now["peak_per_weight_byte"] <= 1.3, now


def test_soak_reports_resources_and_server_errors():
    result = run("soak.py", "--minutes", "0.25", "--concurrency", "8", "--fault-every", "6")
    assert result["processes_alive"] and result["neuron_kills"] >= 1
    assert result["unexpected"] == [] and result["server_errors_not_from_kills"] == 0
    assert {"openai_stream", "anthropic_whole", "malformed", "abandoned_stream"} <= set(result["outcomes"])
    for role in ("gateway", "neuron"):
        assert result["start"][role]["rss_mb"] > 0 and result["end"][role]["fds"] > 0
        assert set(result["growth_pct"][role]) == {"rss_mb", "fds"}
