"""What clients and tools rely on: the Responses passthrough, model retrieval, error envelopes and
statuses (404, 405, 529, Retry-After), and an OpenAPI schema that describes every route."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest
from fleet import gateway_only, gateway_settings, load, running_fleet, scripted

from helexa.gateway.app import Gateway, create_app
from helexa.settings import Catalogue
from helexa.testing import free_port, scrape, serve_app

SIM = [{"name": "s", "memory_mb": 4000}]


@pytest.fixture(scope="module")
def responses_fleet():
    with scripted(1) as neurons, gateway_only({"s": neurons[0][1]}) as running:
        yield running


@pytest.fixture(scope="module")
def echo_fleet():
    with running_fleet({"a": {"simulated_devices": SIM}}) as running:
        load(running, "a", "echo/one")
        yield running


def test_responses_stream_through_the_openai_sdk_is_passed_through_and_metered(responses_fleet):
    client = openai.OpenAI(base_url=f"{responses_fleet.url}/v1", api_key="none", max_retries=0)
    stream = client.responses.create(model="script/ok", input="hello", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "one two three four"
    assert events[-1].response.usage.output_tokens == 4
    metrics = responses_fleet.metrics_url
    assert scrape(metrics, "helexa_gateway_completion_tokens_total", model="script/ok") >= 4
    assert scrape(metrics, "helexa_gateway_requests_total", route="/v1/responses", status="200") >= 1


def test_responses_whole(responses_fleet):
    client = openai.OpenAI(base_url=f"{responses_fleet.url}/v1", api_key="none", max_retries=0)
    response = client.responses.create(model="script/ok", input="hello")
    assert response.output_text == "one two three four"
    assert response.usage.input_tokens == 3


def test_models_retrieve(echo_fleet):
    client = openai.OpenAI(base_url=f"{echo_fleet.url}/v1", api_key="none", max_retries=0)
    model = client.models.retrieve("echo/one")
    assert model.id == "echo/one" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no/such-model")
    assert err.value.body["code"] == "model_not_found"
    assert "no/such-model" in err.value.body["message"]


def test_unknown_routes_and_methods_answer_in_the_routes_envelope(echo_fleet):
    missing = httpx.post(f"{echo_fleet.url}/v1/embeddings", json={"model": "echo/one", "input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert echo_fleet.models_on("a") == {"echo/one"}  # nothing was loaded to find that out
    wrong = httpx.get(f"{echo_fleet.url}/v1/messages")
    assert wrong.status_code == 405
    assert wrong.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": wrong.json()["error"]["message"]},
    }
    deep = httpx.post(f"{echo_fleet.url}/v1/chat/completions", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and "error" in deep.json()


def test_admin_load_on_a_named_node_says_that_node():
    neurons = {"n1": {"simulated_devices": SIM}, "n2": {"simulated_devices": SIM}}
    with running_fleet(
        neurons, {"models": [{"id": "echo/twice", "harness": "echo", "vram_mb": 100}]}
    ) as running:
        load(running, "n1", "echo/twice")
        answer = httpx.post(
            f"{running.url}/admin/models/load", json={"model": "echo/twice", "node": "n2"}, timeout=30
        )
        assert answer.status_code == 200 and answer.json()["node"] == "n2"
        bad = httpx.post(f"{running.url}/admin/models/load", json={"model": 5}, timeout=30)
        assert bad.status_code == 400 and "model" in bad.json()["error"]["message"]


def test_overload_is_503_with_retry_after_for_openai_and_529_overloaded_for_anthropic():
    settings = gateway_settings({"gone": f"http://127.0.0.1:{free_port()}"}, poller={"interval_s": 0.1})
    gateway = Gateway(settings, Catalogue())
    with serve_app(create_app(gateway)) as url:
        while gateway.fleet.nodes["gone"].failures < 2:
            time.sleep(0.05)
        openai_style = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": []})
        assert openai_style.status_code == 503 and int(openai_style.headers["retry-after"]) >= 1
        client = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 529
        assert err.value.body["error"]["type"] == "overloaded_error"
        assert int(err.value.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("role", ["gateway", "neuron"])
def test_openapi_describes_every_route_body_and_error_envelope(echo_fleet, role):
    url = echo_fleet.url if role == "gateway" else echo_fleet.neurons["a"][0]
    schema = httpx.get(f"{url}/openapi.json").json()
    app = echo_fleet.gateway if role == "gateway" else None
    paths = schema["paths"]
    expected = (
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/models",
            "/v1/models/{model_id}",
            "/health",
            "/version",
            "/admin/fleet",
            "/admin/models/load",
            "/admin/models/unload",
        ]
        if app is not None
        else [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/tokenize",
            "/discovery",
            "/health",
            "/models",
            "/models/load",
            "/models/unload",
            "/metrics",
            "/version",
            "/v1/models",
        ]
    )
    for path in expected:
        assert path in paths, path
    components = schema["components"]["schemas"]
    assert {"OpenAIError", "AnthropicError"} <= set(components)
    chat = paths["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "messages" in components[body]["properties"]
    if app is not None:
        messages = paths["/v1/messages"]["post"]["responses"]["4XX"]["content"]["application/json"]
        assert messages["schema"]["$ref"].endswith("/AnthropicError")
        load_body = paths["/admin/models/load"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]
        assert "AdminLoad" in str(load_body)
    else:
        load_body = paths["/models/load"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "ModelSpec" in str(load_body)


def test_a_route_no_neuron_serves_is_refused_before_anything_loads():
    with (
        scripted(1, routes=["/v1/chat/completions", "/v1/tokenize"]) as neurons,
        gateway_only({"s": neurons[0][1]}, {"models": [{"id": "cold/model", "vram_mb": 10}]}) as running,
    ):
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        for model in ("cold/model", "script/ok"):  # a catalogue model not loaded, and one loaded there
            with pytest.raises(openai.NotFoundError) as err:
                client.responses.create(model=model, input="hello")
            assert "no neuron in this fleet serves /v1/responses" in err.value.message
            assert err.value.code == "route_not_served"
        seen = httpx.get(f"{neurons[0][1]}/script/seen", timeout=5).json()
        assert "/models/load" not in seen and "/v1/responses" not in seen
        answer = client.chat.completions.create(
            model="script/ok", messages=[{"role": "user", "content": "x"}]
        )
        assert answer.choices[0].message.content == "one two three four"


def test_a_neuron_says_which_routes_it_serves(echo_fleet):
    discovery = httpx.get(f"{echo_fleet.neurons['a'][0]}/discovery", timeout=5).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/tokenize"} <= set(
        discovery["routes"]
    )
    assert echo_fleet.gateway.fleet.serves(echo_fleet.gateway.fleet.nodes["a"], "/v1/responses")


def test_an_image_sent_to_a_text_only_model_is_named_as_an_image(echo_fleet):
    openai_client = openai.OpenAI(base_url=f"{echo_fleet.url}/v1", api_key="none", max_retries=0)
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="echo/one", messages=[{"role": "user", "content": parts}])
    assert "messages[0] has image_url content but this model only reads text" in err.value.message
    claude = anthropic.Anthropic(base_url=echo_fleet.url, api_key="none", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="echo/one",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}],
        )
    assert "image_url content but this model only reads text" in refused.value.message
