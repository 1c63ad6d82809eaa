"""The gateway in front of echo neurons, driven by the `openai` SDK over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from fleet import load, running_fleet

from helexa.gateway.auth import digest
from helexa.gateway.fleet import FleetState
from helexa.settings import NeuronRef
from helexa.testing import free_port, scrape

SIM = [{"name": "sim0", "memory_mb": 4000}]
CATALOGUE = {
    "models": [{"id": "cat/small", "harness": "echo", "vram_mb": 256}],
    "aliases": {"helexa/small": "cat/small"},
}


@pytest.fixture(scope="module")
def fleet():
    neurons = {
        "a": {"simulated_devices": SIM},
        "b": {"simulated_devices": SIM, "harness": {"echo": {"tokens_per_second": 0}}},
    }
    with running_fleet(neurons, CATALOGUE) as running:
        load(running, "a", "echo/on-a")
        load(running, "b", "echo/on-b")
        yield running


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="none", max_retries=0)


def ask(client, model, text="hello there", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def test_routes_by_model(fleet, client):
    assert ask(client, "echo/on-a").choices[0].message.content == "hello there"
    assert ask(client, "echo/on-b").choices[0].message.content == "hello there"
    assert fleet.gateway.fleet.nodes["a"].replicas["echo/on-a"].last_used is not None
    assert fleet.gateway.fleet.nodes["b"].replicas["echo/on-b"].last_used is not None


def test_alias_is_rewritten_and_listed(fleet, client):
    answer = ask(client, "helexa/small")
    assert answer.model == "cat/small"
    listed = {m["id"]: m for m in httpx.get(f"{fleet.url}/v1/models").json()["data"]}
    assert listed["helexa/small"]["alias_of"] == "cat/small"
    assert listed["helexa/small"]["loaded"] and listed["cat/small"]["loaded"]
    assert listed["helexa/small"]["locations"] == listed["cat/small"]["locations"]
    assert sorted(listed["cat/small"]["feasible_on"]) == ["a", "b"]
    assert listed["echo/on-a"]["locations"][0]["node"] == "a"
    assert listed["echo/on-a"]["max_model_len"] == 8192
    assert "tools" in listed["echo/on-a"]["capabilities"]


def test_streaming_arrives_incrementally(fleet):
    load(fleet, "a", "echo/slow", tokens_per_second=25)
    slow = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="none", max_retries=0)
    arrivals = []
    for chunk in ask(slow, "echo/slow", "one two three four five six seven eight nine ten", stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] > 0.25  # ten tokens at 25/s: spread out, not one lump at the end
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) < 0.2


def test_usage_metered_when_the_client_did_not_ask(fleet, client):
    before = scrape(fleet.metrics_url, "helexa_gateway_completion_tokens_total", model="echo/on-b", node="b")
    chunks = list(ask(client, "echo/on-b", "count these five words", stream=True))
    assert all(c.choices for c in chunks)  # the client never sees the usage chunk it did not ask for
    after = scrape(fleet.metrics_url, "helexa_gateway_completion_tokens_total", model="echo/on-b", node="b")
    assert after - before == 4


def test_usage_passes_through_when_asked(client):
    chunks = list(ask(client, "echo/on-b", "a b c", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_unknown_model_is_404_with_a_hint(client):
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "nobody/has-this")
    assert "not in the catalogue" in err.value.message
    assert "echo/on-a" in err.value.message


def test_missing_model_and_malformed_bodies(fleet):
    for body, needle in [(b"{}", "no 'model'"), (b"{oops", "not valid JSON"), (b'{"model": 3}', "model")]:
        response = httpx.post(f"{fleet.url}/v1/chat/completions", content=body)
        assert response.status_code == 400
        assert needle in response.json()["error"]["message"]
    big = b'{"model": "echo/on-a", "x": "' + b"y" * (33 * 2**20) + b'"}'
    assert httpx.post(f"{fleet.url}/v1/chat/completions", content=big, timeout=30).status_code == 413
    assert httpx.get(f"{fleet.url}/health").json()["status"] == "ok"


def test_neuron_errors_pass_through(client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "echo/on-a", max_tokens=-1)
    assert "max_tokens" in err.value.message


def test_health_version_and_fleet(fleet):
    assert httpx.get(f"{fleet.url}/health").json() == {"status": "ok", "nodes": {"healthy": 2, "total": 2}}
    assert httpx.get(f"{fleet.url}/version").json()["role"] == "gateway"
    nodes = {n["name"]: n for n in httpx.get(f"{fleet.url}/admin/fleet").json()["nodes"]}
    assert nodes["a"]["healthy"] and nodes["a"]["devices"][0]["total_mb"] == 4000
    assert "echo/on-a" in {m["id"] for m in nodes["a"]["models"]}


async def test_client_disconnect_cancels_the_neuron_sequence_within_100ms(fleet):
    load(fleet, "a", "echo/long", tokens_per_second=20)
    entry = fleet.neurons["a"][1].manager.entries["echo/long"]
    body = {
        "model": "echo/long",
        "stream": True,
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "word " * 300}],
    }
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{fleet.url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, await response.aread()
        seen = []
        async for line in response.aiter_lines():
            seen.append(line)
            if "word" in line:
                break
        assert "word" in seen[-1], seen  # the answer had begun streaming
        assert entry.admission.running == 1
    left = time.monotonic()
    while entry.admission.running:
        assert time.monotonic() - left < 0.1, "the neuron kept generating after the client left"
        await asyncio.sleep(0.005)


def test_metrics_after_traffic(fleet, client):
    ask(client, "echo/on-a")
    list(ask(client, "echo/on-a", stream=True))
    url = fleet.metrics_url
    labels = {"model": "echo/on-a", "node": "a"}
    assert (
        scrape(url, "helexa_gateway_requests_total", route="/v1/chat/completions", status="200", **labels)
        >= 2
    )
    assert (
        scrape(url, "helexa_gateway_request_duration_seconds_count", route="/v1/chat/completions", **labels)
        >= 2
    )
    assert (
        scrape(
            url, "helexa_gateway_time_to_first_token_seconds_count", route="/v1/chat/completions", **labels
        )
        >= 1
    )
    assert scrape(url, "helexa_gateway_tokens_per_second_count", **labels) >= 1
    assert scrape(url, "helexa_gateway_prompt_tokens_total", **labels) > 0
    assert scrape(url, "helexa_gateway_completion_tokens_total", **labels) > 0
    assert scrape(url, "helexa_gateway_in_flight", **labels) == 0
    assert scrape(url, "helexa_gateway_node_up", node="a") == 1
    assert (
        scrape(url, "helexa_gateway_cold_starts_total", model="cat/small", node="a")
        + scrape(url, "helexa_gateway_cold_starts_total", model="cat/small", node="b")
        >= 1
    )
    assert (
        scrape(url, "helexa_gateway_request_errors_total", route="/v1/chat/completions", reason="status_404")
        >= 1
    )


def test_poller_debounce():
    fleet = FleetState([NeuronRef(name="n", endpoint="http://n:1")], unhealthy_after=2)
    fleet.poll_succeeded("n", [], None, None, None)
    assert fleet.nodes["n"].healthy
    assert not fleet.poll_failed("n", "timeout")
    assert fleet.nodes["n"].healthy  # one miss is not enough
    fleet.poll_succeeded("n", [], None, None, None)
    assert fleet.nodes["n"].failures == 0
    fleet.poll_failed("n", "timeout")
    assert fleet.poll_failed("n", "timeout")
    assert not fleet.nodes["n"].healthy
    fleet.poll_succeeded("n", [], None, None, None)
    assert fleet.nodes["n"].healthy  # back on the first success


def test_no_healthy_neuron_is_503_with_retry_after():
    with running_fleet({"a": {"simulated_devices": SIM}}, CATALOGUE) as running:
        running.kill("a")
        running.wait(lambda: not running.gateway.fleet.nodes["a"].healthy)
        response = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": "cat/small", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "no healthy neuron" in response.json()["error"]["message"]
        assert httpx.get(f"{running.url}/health").json()["status"] == "degraded"


def spawn_neuron(tmp_path, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "echo"\nname = "{name}"\n'
        "[harness.echo]\ntokens_per_second = 20\n"
        '[[simulated_devices]]\nname = "s"\nmemory_mb = 4000\n'
        '[[default_models]]\nmodel_id = "echo/shared"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "helexa", "--role", "neuron", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HELEXA_DISABLE_PLUGINS": "torch"},  # echo is enough; torch only slows the start
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models").json():
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()  # never left behind by a failed test
    process.wait()
    raise AssertionError(f"neuron {name} did not come up in 90 s")


def test_neuron_killed_mid_stream(tmp_path):
    from fleet import gateway_only

    first, first_url = spawn_neuron(tmp_path, "first")
    try:
        second, second_url = spawn_neuron(tmp_path, "second")
    except AssertionError:
        first.kill()
        raise
    try:
        with gateway_only({"first": first_url, "second": second_url}) as running:
            running.wait(lambda: len(running.gateway.fleet.replicas("echo/shared")) == 2)
            client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
            stream = ask(client, "echo/shared", "word " * 100, stream=True)
            victim = None
            pieces = []
            with pytest.raises(openai.APIError) as err:
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 3 and victim is None:
                        busy = [n for n, r in running.gateway.fleet.replicas("echo/shared") if r.in_flight]
                        victim = busy[0].name
                        os.kill((first if victim == "first" else second).pid, signal.SIGKILL)
            assert "failed mid-stream" in str(err.value)
            assert pieces  # what arrived before the failure was delivered
            answer = ask(client, "echo/shared", "still here")
            assert answer.choices[0].message.content == "still here"
            survivor = "second" if victim == "first" else "first"
            assert running.gateway.fleet.nodes[survivor].replicas["echo/shared"].last_used is not None
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


KEY, ADMIN = "user-secret", "admin-secret"
ROUTES = [
    ("POST", "/v1/chat/completions", "user"),
    ("POST", "/v1/completions", "user"),
    ("POST", "/v1/responses", "user"),
    ("GET", "/v1/models", "user"),
    ("GET", "/v1/models/cat/small", "user"),
    ("POST", "/v1/messages", "user"),
    ("POST", "/v1/messages/count_tokens", "user"),
    ("GET", "/admin/fleet", "admin"),
    ("POST", "/admin/models/load", "admin"),
    ("POST", "/admin/models/unload", "admin"),
    ("GET", "/health", "open"),
    ("GET", "/version", "open"),
    ("GET", "/openapi.json", "open"),
]


@pytest.fixture(scope="module")
def keyed():
    auth = {"keys": [digest(KEY)], "admin_keys": ["sha256:" + digest(ADMIN)]}
    with running_fleet({"a": {"simulated_devices": SIM}}, CATALOGUE, auth=auth) as running:
        yield running


@pytest.mark.parametrize(("method", "path", "level"), ROUTES)
def test_key_matrix(keyed, method, path, level):
    def status(headers):
        return httpx.request(method, f"{keyed.url}{path}", headers=headers, content=b"{}").status_code

    none, bad = status({}), status({"authorization": "Bearer wrong"})
    user, admin = status({"authorization": f"Bearer {KEY}"}), status({"x-api-key": ADMIN})
    if level == "open":
        assert none == bad == user == admin == 200
    elif level == "user":
        assert none == bad == 401
        assert user not in (401, 403) and admin not in (401, 403)
    else:
        assert none == bad == 401
        assert user == 403
        assert admin not in (401, 403)


def test_key_errors_use_each_protocols_envelope(keyed):
    openai_style = httpx.post(f"{keyed.url}/v1/chat/completions", json={}).json()
    assert openai_style["error"]["code"] == "missing_api_key"
    anthropic_style = httpx.post(f"{keyed.url}/v1/messages", json={}).json()
    assert anthropic_style == {
        "type": "error",
        "error": {"type": "authentication_error", "message": anthropic_style["error"]["message"]},
    }


def test_status_command_shows_nodes_models_and_loads(fleet):
    from click.testing import CliRunner

    from helexa.cli import cli

    table = CliRunner().invoke(cli, ["status", "--gateway", fleet.url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "echo/on-a" in table.output and "loaded" in table.output and "4000 MB" in table.output
    as_json = CliRunner().invoke(cli, ["status", "--gateway", fleet.url, "--json"])
    names = {n["name"] for n in json.loads(as_json.output)["nodes"]}
    assert names == {"a", "b"}
    unreachable = CliRunner().invoke(cli, ["status", "--gateway", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output
