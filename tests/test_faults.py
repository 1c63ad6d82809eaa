"""Neurons that fail in every way a process can: each client gets an in-protocol error in bounded time,
and the next request is served (by another neuron when one is gone)."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest
from fleet import gateway_only, scripted

TIMEOUTS = {"proxy": {"stall_timeout_s": 1.0, "first_byte_timeout_s": 1.5}}


@pytest.fixture(scope="module")
def fleet_of_one():
    with scripted(1) as neurons, gateway_only({"s": neurons[0][1]}, **TIMEOUTS) as running:
        yield running


@pytest.fixture
def faulty(fleet_of_one):
    """The gateway counts each failed answer against the neuron, and two in a row with no good
    poll between them mark it down (then every route answers 503/529). Each test here is about
    one failure, so it starts once a poll has cleared the count left by the one before."""
    fleet_of_one.wait(
        lambda: all(n.healthy and not n.failures for n in fleet_of_one.gateway.fleet.nodes.values())
    )
    return fleet_of_one


def chat(model: str, stream: bool) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def openai_stream_error(url: str, model: str) -> str:
    """The message of the error event that ended an OpenAI stream."""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat(model, True), timeout=10) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] and error["code"] == "upstream_failed"
    return error["message"]


@pytest.mark.parametrize(
    ("model", "words"), [("script/die", "failed mid-stream"), ("script/stall", "stalled")]
)
def test_a_broken_stream_ends_with_an_openai_error_event(faulty, model, words):
    started = time.monotonic()
    assert words in openai_stream_error(faulty.url, model)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("model", "words"), [("script/die", "failed mid-stream"), ("script/stall", "stalled")]
)
def test_a_broken_stream_ends_with_an_anthropic_error_event(faulty, model, words):
    client = anthropic.Anthropic(base_url=faulty.url, api_key="none", max_retries=0)
    started = time.monotonic()
    messages = [{"role": "user", "content": "hi"}]
    with (
        pytest.raises(anthropic.APIStatusError) as err,
        client.messages.stream(model=model, max_tokens=10, messages=messages) as stream,
    ):
        for _ in stream:
            pass
    assert words in str(err.value)
    assert time.monotonic() - started < 5


def test_a_broken_stream_ends_with_response_failed(faulty):
    with httpx.stream(
        "POST", f"{faulty.url}/v1/responses", json={"model": "script/die", "input": "hi", "stream": True}
    ) as response:
        text = response.read().decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[0] == "response.created" and names[-1] == "response.failed"
    failed = json.loads(text.strip().splitlines()[-1][6:])
    assert failed["response"]["status"] == "failed"
    assert "failed mid-stream" in failed["response"]["error"]["message"]
    assert failed["sequence_number"] == 2  # after the last event the client saw


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("script/silent", 504, "sent nothing"),
        ("script/garbage", 502, "malformed"),
        ("script/badjson", 502, "not valid JSON"),
        ("script/truncated", 502, "in the middle of its answer"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_whole_answers_that_go_wrong_are_errors_in_the_routes_envelope(faulty, model, status, words, route):
    body = chat(model, False) | ({"max_tokens": 10} if route == "/v1/messages" else {})
    started = time.monotonic()
    response = httpx.post(f"{faulty.url}{route}", json=body, timeout=10)
    assert time.monotonic() - started < 5
    assert response.status_code == status
    if route == "/v1/messages":
        assert response.json()["type"] == "error"
        assert words in response.json()["error"]["message"]
    else:
        assert words in response.json()["error"]["message"]
    assert "Connection refused" not in response.text  # a neuron that broke is not said to be unreachable


def test_a_refusal_keeps_the_neurons_words_and_retry_after(faulty):
    client = openai.OpenAI(base_url=f"{faulty.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="script/refuse", messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after"] == "7"
    assert "at capacity" in err.value.message
    with pytest.raises(openai.RateLimitError):  # streams too: refused before the headers
        client.chat.completions.create(
            model="script/refuse", messages=[{"role": "user", "content": "x"}], stream=True
        )
    answer = client.chat.completions.create(model="script/ok", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content == "one two three four"


def test_a_killed_neuron_ends_the_stream_in_protocol_and_the_next_request_fails_over():
    with (
        scripted(2) as neurons,
        gateway_only({"a": neurons[0][1], "b": neurons[1][1]}, **TIMEOUTS) as running,
    ):
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="script/slow", messages=[{"role": "user", "content": "x"}], stream=True
        )
        started = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            for index, _ in enumerate(stream):
                if index == 3:
                    busy = [n.name for n, r in running.gateway.fleet.replicas("script/slow") if r.in_flight]
                    victim = dict(zip("ab", neurons, strict=True))[busy[0]][0]
                    victim.kill()
        assert "failed mid-stream" in str(err.value)
        assert time.monotonic() - started < 5
        for _ in range(3):  # whichever neuron routing picks, the answer comes from the live one
            answer = client.chat.completions.create(
                model="script/ok", messages=[{"role": "user", "content": "x"}]
            )
            assert answer.choices[0].message.content == "one two three four"
