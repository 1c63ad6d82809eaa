"""The real coding agents, end to end: Claude Code and Codex CLI through the gateway.

Each CLI runs headless against a gateway in front of an echo neuron whose model is
scripted to call the agent's shell tool first (Claude Code's ``Bash``, Codex's
``exec_command``) and then to answer with what the tool printed. The answer can only
contain ``helexa-42`` if the agent really ran the command and sent its output back.

The CLIs are test-only, installed from the npm registry at pinned versions into
``.agent-clis/`` (``make agent-clis``; done here on first use). Without npm, or with
``HELEXA_SKIP_AGENT_CLIS=1``, these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fleet import running_fleet

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".agent-clis" / "node_modules" / ".bin"
COMMAND = "echo helexa-$((6*7))"
CLAUDE_CALL = json.dumps({"name": "Bash", "arguments": {"command": COMMAND, "description": "Print a number"}})
CODEX_CALL = json.dumps({"name": "exec_command", "arguments": {"cmd": COMMAND}})
# Thinking models, as Claude Code and Codex are used with: each turn thinks first.
ANSWER = "<think>It ran.</think>The command printed: {last_tool}"
CLAUDE_SCRIPT = [f"<think>The user wants it run.</think><tool_call>{CLAUDE_CALL}</tool_call>", ANSWER]
CODEX_SCRIPT = [f"<think>The user wants it run.</think><tool_call>{CODEX_CALL}</tool_call>", ANSWER]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    if os.environ.get("HELEXA_SKIP_AGENT_CLIS") == "1":
        pytest.skip("HELEXA_SKIP_AGENT_CLIS=1: the real agent CLIs are not run")
    if not ((BIN / "claude").exists() and (BIN / "codex").exists()):
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.skip("npm/node not found: install Node.js 18+ to run Claude Code and Codex end to end")
        done = subprocess.run(["make", "agent-clis"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"could not install the agent CLIs from npm (make agent-clis): {done.stderr[-500:]}")
    return BIN


@pytest.fixture(scope="module")
def fleet():
    def model(model_id: str, script, **options):
        return {
            "id": model_id,
            "harness": "echo",
            "vram_mb": 10,
            "options": {"size_mb": 10, "script": script, **options},
        }

    catalogue = {
        "models": [
            model("agent/claude", CLAUDE_SCRIPT, max_model_len=200_000),
            model("agent/claude-small", CLAUDE_SCRIPT, max_model_len=30_000),
            model("agent/codex", CODEX_SCRIPT, max_model_len=200_000),
            model("agent/fast", "ok", max_model_len=200_000),
        ]
    }
    with running_fleet({"n": {"simulated_devices": [{"name": "s", "memory_mb": 4000}]}}, catalogue) as f:
        yield f


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_"))
    }
    env.update(HOME=str(home), DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1", NO_COLOR="1", **extra)
    return env


def run_claude(agent_bin: Path, fleet, tmp_path: Path, model: str) -> subprocess.CompletedProcess:
    env = _env(
        tmp_path / "home",
        ANTHROPIC_BASE_URL=fleet.url,
        ANTHROPIC_API_KEY="helexa-test",
        ANTHROPIC_MODEL=model,
        ANTHROPIC_SMALL_FAST_MODEL="agent/fast",
        ANTHROPIC_DEFAULT_HAIKU_MODEL="agent/fast",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    command = [
        str(agent_bin / "claude"),
        "-p",
        "Run the command and tell me what it printed.",
        "--output-format",
        "stream-json",
        "--verbose",
        "--max-turns",
        "4",
        "--allowedTools",
        "Bash",
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


def claude_answer(stdout: str) -> str:
    """The text Claude Code's assistant said, after its tool ran (from its stream-json log)."""
    texts = []
    for line in stdout.splitlines():
        event = json.loads(line)
        if event.get("type") == "assistant":
            texts += [b["text"] for b in event["message"]["content"] if b.get("type") == "text"]
    return "\n".join(texts)


def test_claude_code_runs_bash_and_answers(agent_bin, fleet, tmp_path):
    done = run_claude(agent_bin, fleet, tmp_path, "agent/claude")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "helexa-42" in claude_answer(done.stdout), done.stdout[-3000:]


def test_claude_code_recovers_from_a_context_smaller_than_its_max_tokens(agent_bin, fleet, tmp_path):
    """32000 max_tokens do not fit next to its prompt: it must retry with fewer, as with Anthropic's API."""
    done = run_claude(agent_bin, fleet, tmp_path, "agent/claude-small")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "helexa-42" in claude_answer(done.stdout), done.stdout[-3000:]


def test_codex_runs_exec_command_and_answers(agent_bin, fleet, tmp_path):
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"""model = "agent/codex"
model_provider = "helexa"

[model_providers.helexa]
name = "helexa"
base_url = "{fleet.url}/v1"
wire_api = "responses"
env_key = "HELEXA_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""
    )
    last = tmp_path / "last-message.txt"
    env = _env(tmp_path, CODEX_HOME=str(home), HELEXA_API_KEY="helexa-test")
    command = [
        str(agent_bin / "codex"),
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "--output-last-message",
        str(last),
        "Run the command and tell me what it printed.",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "helexa-42" in last.read_text()
