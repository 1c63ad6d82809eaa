"""The real `anthropic` SDK against the gateway, in front of an echo neuron scripted per model."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from fleet import running_fleet

from helexa.testing import scrape

CALL = '<tool_call>{{"name": "get_weather", "arguments": {{"city": "{}"}}}}</tool_call>'
SCRIPTS = {
    "s/text": "The sky is blue.",
    "s/thinking": "<think>The user asks about the sky.</think>It is blue.",
    "s/one-tool": CALL.format("Paris"),
    "s/two-tools": CALL.format("Paris") + CALL.format("Rome"),
    "s/text-then-tool": "Let me check." + CALL.format("Oslo"),
    "s/loop": [CALL.format("Lima"), "It is {last_tool} in Lima."],
}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
EXPECTED = {
    "s/text": [("text", "The sky is blue.")],
    "s/thinking": [("thinking", "The user asks about the sky."), ("text", "It is blue.")],
    "s/one-tool": [("tool_use", {"city": "Paris"})],
    "s/two-tools": [("tool_use", {"city": "Paris"}), ("tool_use", {"city": "Rome"})],
    "s/text-then-tool": [("text", "Let me check."), ("tool_use", {"city": "Oslo"})],
}


@pytest.fixture(scope="module")
def fleet():
    catalogue = {
        "models": [
            {"id": m, "harness": "echo", "vram_mb": 10, "options": {"size_mb": 10, "script": s}}
            for m, s in SCRIPTS.items()
        ],
        "aliases": {"claude-helexa": "s/text"},
    }
    with running_fleet(
        {"n": {"simulated_devices": [{"name": "s", "memory_mb": 4000}]}}, catalogue
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(fleet):
    return anthropic.Anthropic(base_url=fleet.url, api_key="any", max_retries=0)


def summary(message):
    out = []
    for block in message.content:
        if block.type == "text":
            out.append(("text", block.text))
        elif block.type == "thinking":
            out.append(("thinking", block.thinking))
        elif block.type == "tool_use":
            out.append(("tool_use", block.input))
    return out


def expected_stop(model):
    return "tool_use" if "tool" in model else "end_turn"


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_create(client, model):
    message = client.messages.create(
        model=model, max_tokens=200, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    )
    assert summary(message) == EXPECTED[model]
    assert message.stop_reason == expected_stop(model)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.model == model


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_stream(client, model):
    with client.messages.stream(
        model=model, max_tokens=200, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert summary(final) == EXPECTED[model]
    assert final.stop_reason == expected_stop(model)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_multi_turn_with_tool_results(client):
    messages = [{"role": "user", "content": "weather in Lima?"}]
    first = client.messages.create(model="s/loop", max_tokens=200, tools=TOOLS, messages=messages)
    call = first.content[0]
    assert call.type == "tool_use" and call.input == {"city": "Lima"}
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21C"}]},
    ]
    second = client.messages.create(model="s/loop", max_tokens=200, tools=TOOLS, messages=messages)
    assert summary(second) == [("text", "It is 21C in Lima.")]
    assert second.stop_reason == "end_turn"


def test_stop_sequences_and_max_tokens(client):
    stopped = client.messages.create(
        model="s/text", max_tokens=50, stop_sequences=["blue"], messages=[{"role": "user", "content": "x"}]
    )
    assert summary(stopped) == [("text", "The sky is ")]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "blue")
    short = client.messages.create(
        model="claude-helexa", max_tokens=2, messages=[{"role": "user", "content": "x"}]
    )
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_count_tokens_counts_the_template_with_tools(client):
    plain = client.messages.count_tokens(model="s/text", messages=[{"role": "user", "content": "weather?"}])
    with_tools = client.messages.count_tokens(
        model="s/text", tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]
    )
    assert 0 < plain.input_tokens < with_tools.input_tokens
    created = client.messages.create(
        model="s/text", max_tokens=20, messages=[{"role": "user", "content": "weather?"}]
    )
    assert created.usage.input_tokens == plain.input_tokens


def test_errors_in_anthropics_envelope(fleet, client):
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="nope/nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "not_found_error"
    missing = httpx.post(f"{fleet.url}/v1/messages", json={"model": "s/text", "messages": []})
    assert missing.status_code == 400
    assert missing.json()["type"] == "error" and "max_tokens" in missing.json()["error"]["message"]
    unknown = httpx.post(
        f"{fleet.url}/v1/messages",
        json={
            "model": "s/text",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "hologram"}]}],
        },
    )
    assert unknown.status_code == 400 and "'hologram'" in unknown.json()["error"]["message"]
    big = httpx.post(f"{fleet.url}/v1/messages", content=b'{"x": "' + b"y" * (33 * 2**20) + b'"}', timeout=30)
    assert big.status_code == 413 and big.json()["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="s/text",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temperature": 7},
        )


def test_headers_and_keys_are_accepted(fleet):
    response = httpx.post(
        f"{fleet.url}/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024-04-04"},
        json={"model": "s/text", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 200


def test_metering_as_on_openai_routes(fleet, client):
    list(
        client.messages.create(
            model="s/text", max_tokens=20, stream=True, messages=[{"role": "user", "content": "x"}]
        )
    )
    labels = {"model": "s/text", "node": "n"}
    assert (
        scrape(
            fleet.metrics_url, "helexa_gateway_requests_total", route="/v1/messages", status="200", **labels
        )
        >= 1
    )
    assert (
        scrape(
            fleet.metrics_url,
            "helexa_gateway_time_to_first_token_seconds_count",
            route="/v1/messages",
            **labels,
        )
        >= 1
    )
    assert scrape(fleet.metrics_url, "helexa_gateway_completion_tokens_total", **labels) > 0


def test_a_neuron_failing_mid_stream_sends_an_error_event():
    catalogue = {
        "models": [
            {
                "id": "s/slow",
                "harness": "echo",
                "vram_mb": 10,
                "options": {"size_mb": 10, "tokens_per_second": 20, "script": "word " * 50},
            }
        ]
    }
    with running_fleet({"n": {"simulated_devices": [{"name": "s", "memory_mb": 100}]}}, catalogue) as running:
        client = anthropic.Anthropic(base_url=running.url, api_key="k", max_retries=0)
        with (
            pytest.raises(anthropic.APIError) as err,
            client.messages.stream(
                model="s/slow", max_tokens=100, messages=[{"role": "user", "content": "x"}]
            ) as stream,
        ):
            for count, _ in enumerate(stream):
                if count == 4:
                    httpx.post(f"{running.neurons['n'][0]}/models/unload", json={"model_id": "s/slow"})
        assert "stopped before it finished" in str(err.value) or "unloaded" in str(err.value)
