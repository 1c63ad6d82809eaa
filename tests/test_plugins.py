"""The plugin host: discovery one entry point at a time, isolation of failures, blocking, duplicates."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from helexa import hookimpl
from helexa.plugins import UnknownEntry, load_plugins

MODULES = {
    "hx_good": """
        from helexa import hookimpl

        @hookimpl
        def register_harnesses(register):
            register("good", lambda ctx: "a good harness")

        @hookimpl
        def register_architectures(register):
            register("GoodForCausalLM", lambda: type("GoodForCausalLM", (), {}))
    """,
    "hx_broken": """
        raise ImportError("libcuda.so.1: cannot open shared object file")
    """,
    "hx_typo": """
        from helexa import hookimpl

        @hookimpl
        def register_harnessez(register):
            register("typo", lambda ctx: None)
    """,
    "hx_blocked": """
        raise AssertionError("a blocked plugin must never be imported")
    """,
    "hx_raises": """
        from helexa import hookimpl

        @hookimpl
        def register_harnesses(register):
            register("half", lambda ctx: None)
            raise RuntimeError("boom while registering")
    """,
    "hx_dupe": """
        from helexa import hookimpl

        @hookimpl
        def register_harnesses(register):
            register("good", lambda ctx: "the other good harness")
    """,
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    for name, body in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def eps(*names: str) -> list[EntryPoint]:
    return [EntryPoint(name=n.removeprefix("hx_"), value=n, group="helexa") for n in names]


def test_working_plugin_registers_by_name(plugin_dir):
    host = load_plugins(discovered=eps("hx_good"))
    assert host.harnesses.get("good")(None) == "a good harness"
    assert host.architectures.names() == ["GoodForCausalLM"]
    info = host.info("good")
    assert info.status == "loaded"
    assert info.registered == {"harness": ["good"], "architecture": ["GoodForCausalLM"]}


def test_broken_plugin_is_reported_and_others_load(plugin_dir, caplog):
    host = load_plugins(discovered=eps("hx_broken", "hx_good"))
    broken = host.info("broken")
    assert broken.status == "failed"
    assert "libcuda.so.1" in broken.error
    assert host.harnesses.names() == ["good"]
    assert "plugin 'broken'" in caplog.text


def test_unknown_hook_implementation_is_rejected(plugin_dir):
    host = load_plugins(discovered=eps("hx_typo", "hx_good"))
    typo = host.info("typo")
    assert typo.status == "failed"
    assert "register_harnessez" in typo.error
    assert host.harnesses.names() == ["good"]


def test_blocked_names_are_never_imported(plugin_dir, monkeypatch):
    monkeypatch.setenv("HELEXA_DISABLE_PLUGINS", "blocked, other")
    host = load_plugins(discovered=eps("hx_blocked", "hx_good"))
    assert "hx_blocked" not in sys.modules
    assert host.info("blocked").status == "disabled"
    assert host.harnesses.names() == ["good"]


def test_config_can_block_too(plugin_dir):
    host = load_plugins(discovered=eps("hx_good"), disabled=["good"])
    assert "hx_good" not in sys.modules
    assert host.harnesses.names() == []


def test_plugin_that_raises_while_registering_keeps_nothing(plugin_dir):
    host = load_plugins(discovered=eps("hx_raises", "hx_good"))
    assert host.harnesses.names() == ["good"]
    assert "boom while registering" in host.info("raises").error


def test_duplicate_names_warn_and_first_wins_unless_config_prefers(plugin_dir, caplog):
    host = load_plugins(discovered=eps("hx_dupe", "hx_good"))
    assert host.harnesses.get("good")(None) == "the other good harness"  # "dupe" sorts first
    assert "offered by plugins 'dupe' and 'good'" in caplog.text
    preferred = load_plugins(discovered=eps("hx_dupe", "hx_good"), prefer={"harness.good": "good"})
    assert preferred.harnesses.get("good")(None) == "a good harness"


def test_unknown_name_lists_installed_ones(plugin_dir):
    host = load_plugins(discovered=eps("hx_good"))
    with pytest.raises(UnknownEntry, match=r"no harness named 'gpu' is installed \(installed: good\)"):
        host.harnesses.get("gpu")


def test_strict_mode_raises(plugin_dir, monkeypatch):
    monkeypatch.setenv("HELEXA_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="libcuda"):
        load_plugins(discovered=eps("hx_broken"))


def test_in_process_plugin_objects():
    class Inline:
        @hookimpl
        def register_eviction_strategies(self, register):
            register("never", lambda: lambda models, needed, incoming: None)

    host = load_plugins(discovered=[], extra={"inline": Inline()})
    assert host.eviction_strategies.get("never")()([], 10, None) is None


def test_installed_builtin_strategies_come_through_entry_points():
    host = load_plugins()
    for name in ("lru", "priority"):
        info = host.info(name)
        assert info.distribution == "helexa"
        assert info.version
        assert info.registered == {"eviction_strategy": [name]}


def test_a_plugin_tool_format_reads_a_models_calls():
    """The docs/plugins.md example: a format registered by a plugin, named by the harness."""
    import json

    import httpx
    import openai
    from neurons import neuron_settings

    from helexa.neuron.app import Neuron, create_app
    from helexa.neuron.parsing import ToolCallOut, new_call_id
    from helexa.testing import serve_app

    class Granite:
        name = "granite"
        opens = ("<|tool_call|>",)
        close = None
        whole_answer = False

        def parse(self, body, tools):
            try:
                calls = json.loads(body)
            except json.JSONDecodeError:
                return None
            return [ToolCallOut(new_call_id(), c["name"], json.dumps(c.get("arguments", {}))) for c in calls]

        def detect(self, chat_template, special_tokens):
            return "<|tool_call|>" in special_tokens

    class Inline:
        @hookimpl
        def register_tool_parsers(self, register):
            register("granite", Granite)

    host = load_plugins(extra={"granite": Inline()})
    assert host.tool_parsers.names() == ["granite"]
    neuron = Neuron(neuron_settings(simulated_devices=[{"name": "s", "memory_mb": 1000}]), plugins=host)
    script = 'Checking.<|tool_call|>[{"name": "lookup", "arguments": {"q": "helexa"}}]'
    with serve_app(create_app(neuron)) as url:
        httpx.post(
            f"{url}/models/load",
            json={"model_id": "echo/granite", "options": {"script": script, "tool_format": "granite"}},
        ).raise_for_status()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(
            model="echo/granite",
            messages=[{"role": "user", "content": "?"}],
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        )
    message = answer.choices[0].message
    assert message.content == "Checking."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("lookup", {"q": "helexa"})
    ]
    assert answer.choices[0].finish_reason == "tool_calls"
