"""The neuron over real sockets with the echo harness, driven by the `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from neurons import running_neuron

from helexa.testing import scrape

SIM = [{"name": "sim0", "memory_mb": 8000}]


@pytest.fixture(scope="module")
def neuron():
    with running_neuron(simulated_devices=SIM) as (url, service):
        httpx.post(f"{url}/models/load", json={"model_id": "echo/plain"}).raise_for_status()
        yield url, service


@pytest.fixture(scope="module")
def client(neuron):
    return openai.OpenAI(base_url=f"{neuron[0]}/v1", api_key="unused", max_retries=0)


def load(url, model_id, **options):
    response = httpx.post(f"{url}/models/load", json={"model_id": model_id, "options": options}, timeout=30)
    response.raise_for_status()
    return response.json()


def test_load_is_listed_with_memory_and_capabilities(neuron):
    url, _ = neuron
    models = {m["id"]: m for m in httpx.get(f"{url}/models").json()}
    plain = models["echo/plain"]
    assert plain["status"] == "loaded"
    assert plain["vram_used_mb"] == 256
    assert plain["devices"] == [0]
    assert "tools" in plain["capabilities"]
    health = httpx.get(f"{url}/health").json()
    assert health["devices"][0]["vram_used_mb"] >= 256


def test_loading_twice_does_not_load_twice(neuron):
    url, service = neuron
    before = service.hardware.ledger.used(0)
    load(url, "echo/plain")
    assert service.hardware.ledger.used(0) == before


def test_chat_completion(client):
    answer = client.chat.completions.create(
        model="echo/plain", messages=[{"role": "user", "content": "The capital of France is Paris."}]
    )
    choice = answer.choices[0]
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert answer.usage.completion_tokens == 7
    assert answer.usage.prompt_tokens > 7
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 7


def test_chat_stream_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="echo/plain",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1


def test_stream_without_usage_request_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="echo/plain", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)


def test_max_tokens_and_max_completion_tokens(client):
    long = "a b c d e f g h"
    answer = client.chat.completions.create(
        model="echo/plain", messages=[{"role": "user", "content": long}], max_tokens=3
    )
    assert answer.choices[0].message.content == "a b c"
    assert answer.choices[0].finish_reason == "length"
    answer = client.chat.completions.create(
        model="echo/plain", messages=[{"role": "user", "content": long}], max_completion_tokens=2
    )
    assert answer.usage.completion_tokens == 2


def test_ignore_eos_and_min_tokens_give_fixed_lengths(client):
    answer = client.chat.completions.create(
        model="echo/plain",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    assert answer.usage.completion_tokens == 12
    answer = client.chat.completions.create(
        model="echo/plain",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=50,
        extra_body={"min_tokens": 5},
    )
    assert answer.usage.completion_tokens == 5


def test_stop_strings_end_generation_and_are_not_emitted(client):
    answer = client.chat.completions.create(
        model="echo/plain",
        messages=[{"role": "user", "content": "alpha beta STOP gamma delta"}],
        stop=["STOP", "never"],
    )
    assert answer.choices[0].message.content == "alpha beta "
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="echo/plain",
        messages=[{"role": "user", "content": "alpha beta STOP gamma"}],
        stop="STOP",
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "alpha beta "


def test_parameters_reach_the_harness(neuron, client):
    load(neuron[0], "echo/params", script="{params}")
    answer = client.chat.completions.create(
        model="echo/params",
        messages=[{"role": "user", "content": "x"}],
        temperature=0.3,
        top_p=0.8,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        max_tokens=500,
        extra_body={"top_k": 12, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    params = json.loads(answer.choices[0].message.content)
    assert params["temperature"] == 0.3
    assert params["top_p"] == 0.8
    assert params["top_k"] == 12
    assert params["min_p"] == 0.05
    assert params["seed"] == 7
    assert params["presence_penalty"] == 0.5
    assert params["frequency_penalty"] == 0.25
    assert params["repetition_penalty"] == 1.1
    assert params["max_tokens"] == 500


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
SCRIPT = (
    "<think>The user wants weather.</think>Checking now."
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    "<tool_call><function=get_weather><parameter=city>Rome</parameter><parameter=days>3</parameter>"
    "</function></tool_call>"
)


def test_reasoning_and_tool_calls_parsed(neuron, client):
    load(neuron[0], "echo/tools", script=SCRIPT)
    answer = client.chat.completions.create(
        model="echo/tools", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS
    )
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking now."
    assert message.model_extra["reasoning_content"] == "The user wants weather."
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome", "days": 3})]


def test_reasoning_and_tool_calls_streamed(client):
    stream = client.chat.completions.create(
        model="echo/tools", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
    )
    reasoning, content, calls, finish = "", "", [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning == "The user wants weather."
    assert content == "Checking now."
    assert [c.index for c in calls] == [0, 1]
    assert json.loads(calls[1].function.arguments) == {"city": "Rome", "days": 3}
    assert finish == "tool_calls"


def test_without_tools_the_markup_is_content(client):
    answer = client.chat.completions.create(model="echo/tools", messages=[{"role": "user", "content": "x"}])
    assert "<tool_call>" in answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_completions(client):
    answer = client.completions.create(model="echo/plain", prompt="once upon a time", max_tokens=2)
    assert answer.choices[0].text == "once upon"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == 4
    streamed = client.completions.create(model="echo/plain", prompt="once upon a time", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "once upon a time"


def test_tokenize_counts_with_the_template(neuron):
    url, _ = neuron
    plain = httpx.post(f"{url}/v1/tokenize", json={"model": "echo/plain", "prompt": "a b c"}).json()
    assert plain["count"] == 3
    messages = [{"role": "user", "content": "a b c"}]
    chat = httpx.post(f"{url}/v1/tokenize", json={"model": "echo/plain", "messages": messages}).json()
    with_tools = httpx.post(
        f"{url}/v1/tokenize", json={"model": "echo/plain", "messages": messages, "tools": TOOLS}
    ).json()
    assert chat["count"] > 3
    assert with_tools["count"] > chat["count"]
    assert chat["max_model_len"] == 8192


def test_context_length_exceeded_is_a_400_never_truncated(neuron, client):
    load(neuron[0], "echo/tiny-context", max_model_len=8)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="echo/tiny-context", messages=[{"role": "user", "content": "a b c d e f g h i j"}]
        )
    assert err.value.code == "context_length_exceeded"
    assert "maximum context length is 8 tokens" in err.value.message


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="echo/nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "echo/plain"}', 400, "messages"),
        (b'{"model": "echo/plain", "messages": "hi"}', 400, "messages"),
        (
            b'{"model": "echo/plain", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "echo/plain", "messages": [{"role": "user", "content": "x"}], '
            b'"max_tokens": 99999999999}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "echo/plain", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"model": "echo/plain", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'{"model": "echo/plain", "messages": [{"role": "user", "content": "x"}], "n": 99}', 400, "n=99"),
        (b"[1, 2, 3]", 400, "object"),
    ],
)
def test_malformed_and_hostile_inputs_get_4xx_naming_the_field(neuron, body, status, needle):
    url, _ = neuron
    response = httpx.post(f"{url}/v1/chat/completions", content=body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_oversized_body_is_413(neuron):
    url, _ = neuron
    huge = (
        b'{"model": "echo/plain", "messages": [{"role": "user", "content": "' + b"x" * (33 * 2**20) + b'"}]}'
    )
    response = httpx.post(f"{url}/v1/chat/completions", content=huge, timeout=30)
    assert response.status_code == 413
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize(
    "model_id", ["../../etc/passwd", "/etc/passwd", "http://evil.example/model", "org/../../x", "~root/x", ""]
)
def test_hostile_model_ids_are_refused(neuron, model_id):
    url, _ = neuron
    response = httpx.post(f"{url}/models/load", json={"model_id": model_id})
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["message"]


def test_remote_code_cannot_be_enabled(neuron):
    url, _ = neuron
    response = httpx.post(
        f"{url}/models/load", json={"model_id": "echo/x", "options": {"trust_remote_code": True}}
    )
    assert response.status_code == 400
    assert "never runs code" in response.json()["error"]["message"]


def test_memory_full_load_is_refused(neuron):
    url, service = neuron
    free = service.hardware.ledger.free(0)
    response = httpx.post(
        f"{url}/models/load", json={"model_id": "echo/huge", "options": {"size_mb": free + 1}}
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert error["free_mb"] == free
    assert service.hardware.ledger.free(0) == free


def test_unload_frees_memory_and_second_unload_is_404(neuron):
    url, service = neuron
    load(url, "echo/temp", size_mb=100)
    before = service.hardware.ledger.free(0)
    assert httpx.post(f"{url}/models/unload", json={"model_id": "echo/temp"}).json()["status"] == "unloaded"
    assert service.hardware.ledger.free(0) == before + 100
    again = httpx.post(f"{url}/models/unload", json={"model_id": "echo/temp"})
    assert again.status_code == 404


def test_endpoint_route(neuron):
    url, _ = neuron
    assert httpx.get(f"{url}/models/echo/plain/endpoint").json()["url"] == url
    assert httpx.get(f"{url}/models/echo%2Fplain/endpoint").json()["url"] == url
    assert httpx.get(f"{url}/models/echo/other/endpoint").status_code == 404


def test_version(neuron):
    info = httpx.get(f"{neuron[0]}/version").json()
    assert info["package_version"]
    assert info["role"] == "neuron"


def metric(url: str, name: str, **labels: str) -> float:
    return scrape(f"{url}/metrics", name, **labels)


async def test_disconnect_mid_stream_aborts_the_sequence_within_100ms(neuron):
    url, service = neuron
    load(url, "echo/slow", tokens_per_second=20)
    aborted_before = metric(url, "helexa_neuron_aborted_sequences_total", model="echo/slow")
    body = {
        "model": "echo/slow",
        "stream": True,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "word " * 200}],
    }
    async with httpx.AsyncClient() as http:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            lines = response.aiter_lines()
            while "word" not in await lines.__anext__():
                pass
            assert service.manager.entries["echo/slow"].admission.running == 1
        closed = time.monotonic()
    while service.manager.entries["echo/slow"].admission.running:
        assert time.monotonic() - closed < 0.1, "sequence still running 100 ms after the client left"
        await asyncio.sleep(0.005)
    models = {m["id"]: m for m in httpx.get(f"{url}/models").json()}
    assert models["echo/slow"]["in_flight"] == 0
    assert metric(url, "helexa_neuron_aborted_sequences_total", model="echo/slow") == aborted_before + 1


def test_metrics_after_traffic(neuron, client):
    url, _ = neuron
    client.chat.completions.create(model="echo/plain", messages=[{"role": "user", "content": "count me"}])
    assert metric(url, "helexa_neuron_requests_total", model="echo/plain", outcome="ok") >= 1
    assert metric(url, "helexa_neuron_generated_tokens_total", model="echo/plain") >= 2
    assert metric(url, "helexa_neuron_time_to_first_token_seconds_count", model="echo/plain") >= 1
    assert metric(url, "helexa_neuron_model_load_seconds_count", model="echo/plain") == 1
    assert metric(url, "helexa_neuron_device_memory_free_mb", device="0") > 0


async def test_queue_overflow_is_429_with_retry_after():
    with running_neuron(simulated_devices=SIM, neuron={"max_running": 1, "max_queue": 1}) as (url, service):
        load(url, "echo/busy", tokens_per_second=200)
        body = {"model": "echo/busy", "stream": True, "messages": [{"role": "user", "content": "w " * 100}]}
        async with httpx.AsyncClient(timeout=30) as http:
            first = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=body))
            second = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=body))
            admission = service.manager.entries["echo/busy"].admission
            while admission.running + admission.queued < 2:
                await asyncio.sleep(0.01)
            third = await http.post(f"{url}/v1/chat/completions", json=body)
            assert third.status_code == 429
            assert third.headers["retry-after"] == "1"
            assert third.json()["error"]["type"] == "rate_limit_error"
            assert (await first).status_code == 200
            assert (await second).status_code == 200
        assert admission.running == admission.queued == 0
