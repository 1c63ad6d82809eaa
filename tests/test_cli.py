"""The `helexa` executable: plugins listing, config check, role dispatch, and a light --help."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from helexa.cli import cli


def test_plugins_json_lists_builtin_strategies():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.output)}
    for name in ("lru", "priority"):
        assert plugins[name]["distribution"] == "helexa"
        assert plugins[name]["version"]
        assert plugins[name]["registered"]["eviction_strategy"] == [name]


def test_plugins_table_names_each_plugin():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "lru" in result.output and "priority" in result.output


def test_plugins_table_says_which_architectures_run_natively():
    output = CliRunner().invoke(cli, ["plugins"]).output
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if line.count("│") == 4}
    assert "natively" in rows["Qwen3MoeForCausalLM"]
    assert "fallback" in rows["TransformersForCausalLM"]


def test_config_check_accepts_a_valid_file(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('[neuron]\nlisten = "127.0.0.1:13131"\n')
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0
    assert "valid neuron config" in result.output


def test_config_check_on_a_broken_file_names_file_and_key(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("[eviction]\nstrategy = 3\n")
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert f"{path}: eviction.strategy: expected `str`, found 3" in result.output


def test_unknown_role_is_a_usage_error_listing_roles():
    result = CliRunner().invoke(cli, ["--role", "toaster"])
    assert result.exit_code == 2
    assert "unknown role 'toaster'" in result.output
    assert "choose one of" in result.output


def test_set_needs_key_value():
    result = CliRunner().invoke(cli, ["--role", "gateway", "--set", "novalue"])
    assert result.exit_code == 2


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from helexa.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['plugins', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(','.join(m for m in ('torch', 'transformers', 'litestar') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "helexa, version" in result.output
