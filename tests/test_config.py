"""Config loading: TOML errors, types, unknown keys, and the file < env < command line order."""

from __future__ import annotations

import pytest

from helexa.config import ConfigError, check_file, load, load_catalogue
from helexa.settings import BenchSettings, GatewaySettings, NeuronSettings


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_for_every_optional_key(tmp_path):
    settings = load(GatewaySettings, write(tmp_path, "gateway.toml", ""), environ={})
    assert settings.gateway.listen == "0.0.0.0:31313"
    assert settings.poller.unhealthy_after == 2
    assert settings.eviction.strategy == "lru"
    assert settings.gateway.catalogue == str(tmp_path / "models.toml")


def test_bad_toml_names_the_file(tmp_path):
    path = write(tmp_path, "gateway.toml", "[gateway\nlisten = 1")
    with pytest.raises(ConfigError, match=r"gateway\.toml: not valid TOML"):
        load(GatewaySettings, path, environ={})


def test_wrong_type_names_key_expected_and_found(tmp_path):
    path = write(tmp_path, "neuron.toml", '[neuron]\nmax_queue = "lots"\n')
    with pytest.raises(ConfigError) as err:
        load(NeuronSettings, path, environ={})
    assert str(err.value) == f"{path}: neuron.max_queue: expected `int`, found 'lots'"


def test_constraint_violation(tmp_path):
    path = write(tmp_path, "gateway.toml", "[poller]\ninterval_s = 0\n")
    with pytest.raises(ConfigError, match=r"poller\.interval_s: expected `float` > 0\.0, found 0"):
        load(GatewaySettings, path, environ={})


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "gateway.toml", '[[neurons]]\nname = "a"\nendpont = "http://a:13131"\n')
    with pytest.raises(ConfigError, match=r"neurons\[0\]\.endpont: unknown key; did you mean 'endpoint'\?"):
        load(GatewaySettings, path, environ={})


def test_unknown_section(tmp_path):
    path = write(tmp_path, "bench.toml", "[scenarioz]\nmax_tokens = 3\n")
    with pytest.raises(ConfigError, match="scenarioz: unknown key; did you mean 'scenarios'"):
        load(BenchSettings, path, environ={})


def test_value_checks_name_the_key(tmp_path):
    path = write(tmp_path, "gateway.toml", '[[neurons]]\nname = "a"\nendpoint = "a:13131"\n')
    with pytest.raises(ConfigError, match=r"neurons\[0\]\.endpoint: expected an http:// or https:// URL"):
        load(GatewaySettings, path, environ={})


def test_precedence_file_then_env_then_command_line(tmp_path):
    path = write(tmp_path, "gateway.toml", '[gateway]\nlisten = "127.0.0.1:1"\n[poller]\ninterval_s = 3\n')
    env = {"HELEXA_GATEWAY__LISTEN": "127.0.0.1:2", "HELEXA_POLLER__INTERVAL_S": "7", "HELEXA_UNRELATED": "x"}
    from_env = load(GatewaySettings, path, environ=env)
    assert from_env.gateway.listen == "127.0.0.1:2"
    assert from_env.poller.interval_s == 7.0
    from_cli = load(GatewaySettings, path, environ=env, overrides={"gateway.listen": "127.0.0.1:3"})
    assert from_cli.gateway.listen == "127.0.0.1:3"
    assert from_cli.poller.interval_s == 7.0


def test_env_can_set_lists_of_tables(tmp_path):
    env = {"HELEXA_NEURONS": '[{name = "n1", endpoint = "http://n1:13131/"}]'}
    settings = load(GatewaySettings, None, environ=env)
    assert [(n.name, n.endpoint) for n in settings.neurons] == [("n1", "http://n1:13131")]


def test_env_string_keys_are_taken_verbatim(tmp_path):
    settings = load(NeuronSettings, None, environ={"HELEXA_NEURON__NAME": "1234"})
    assert settings.neuron.name == "1234"


def test_env_errors_say_where_the_value_came_from(tmp_path):
    with pytest.raises(
        ConfigError, match=r"poller\.interval_s: .*\(from environment variable HELEXA_POLLER__"
    ):
        load(GatewaySettings, None, environ={"HELEXA_POLLER__INTERVAL_S": "soon"})


def test_catalogue_rejects_duplicate_ids_and_alias_chains(tmp_path):
    dupes = write(tmp_path, "models.toml", '[[models]]\nid = "a/b"\n[[models]]\nid = "a/b"\n')
    with pytest.raises(ConfigError, match="model ids listed twice: a/b"):
        load_catalogue(dupes, environ={})
    chain = write(tmp_path, "models2.toml", '[aliases]\n"x" = "y"\n"y" = "a/b"\n')
    with pytest.raises(ConfigError, match=r"aliases\.x: points at another alias"):
        load_catalogue(chain, environ={})


def test_check_file_follows_the_gateway_catalogue(tmp_path):
    write(tmp_path, "models.toml", '[[models]]\nid = "a/b"\nvram_mb = "big"\n')
    gateway = write(tmp_path, "gateway.toml", 'gateway.catalogue = "models.toml"\n')
    with pytest.raises(ConfigError, match=r"models\.toml: models\[0\]\.vram_mb"):
        check_file(gateway)


def test_kind_is_sniffed_from_tables_when_the_name_does_not_say(tmp_path):
    path = write(tmp_path, "fleet-a.toml", '[[targets]]\nname = "n"\nendpoint = "http://n:13131"\n')
    kind, settings = check_file(path)
    assert kind == "bench"
    assert settings.targets[0].kind == "neuron"
