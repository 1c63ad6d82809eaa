"""OpenAI Responses on the neuron (echo harness, real sockets), driven by the `openai` SDK."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from neurons import running_neuron

from helexa.translate.responses import decode_reasoning, to_chat
from helexa.wire.responses import ResponsesRequest

SIM = [{"name": "sim0", "memory_mb": 8000}]
WEATHER_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def load(url: str, model_id: str, **options) -> None:
    httpx.post(
        f"{url}/models/load", json={"model_id": model_id, "options": options}, timeout=30
    ).raise_for_status()


@pytest.fixture(scope="module")
def neuron():
    with running_neuron(simulated_devices=SIM) as (url, service):
        load(url, "echo/plain")
        load(url, "echo/weather", script=[WEATHER_CALL, "It is {last_tool} in Paris."])
        load(url, "echo/thinker", script="<think>The user said hi.</think>Hello!")
        load(url, "echo/prose", capabilities=["text"])
        load(url, "echo/slow", tokens_per_second=20, script="tick " * 200)
        yield url, service


@pytest.fixture(scope="module")
def client(neuron):
    return openai.OpenAI(base_url=f"{neuron[0]}/v1", api_key="unused", max_retries=0)


def test_text_answer(client):
    response = client.responses.create(model="echo/plain", input="The capital of France is Paris.")
    assert response.status == "completed"
    assert response.output_text == "The capital of France is Paris."
    assert response.output[0].type == "message"
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == 7  # six words and the full stop, as echo counts tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_streamed_events_in_order(client):
    names, deltas, final = [], [], None
    with client.responses.stream(
        model="echo/plain", input="one two three", instructions="Be brief."
    ) as stream:
        for event in stream:
            names.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(deltas) == "one two three" == final.output_text
    assert final.instructions == "Be brief."


def test_function_call_round_trip(client):
    first = client.responses.create(model="echo/weather", input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model="echo/weather",
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "It is sunny in Paris."


def test_streamed_function_call(client):
    events = list(
        client.responses.create(model="echo/weather", input="Weather?", tools=[WEATHER_TOOL], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"}
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "function_call" and item.name == "get_weather"


def test_reasoning_summary_and_encrypted_content(client):
    response = client.responses.create(
        model="echo/thinker",
        input="hi",
        reasoning={"effort": "medium", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    reasoning, message = response.output
    assert message.type == "message"
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == "The user said hi."
    assert decode_reasoning(reasoning.encrypted_content) == "The user said hi."
    assert response.output_text == "Hello!"
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert "<think>" not in json.dumps(response.model_dump())


def test_reasoning_comes_back_to_the_model():
    items = [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "hx1:" + "VGhvdWdodA=="},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "developer", "content": [{"type": "input_text", "text": "Stay polite."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "again"}]},
    ]
    body = to_chat(ResponsesRequest(model="m", input=items, instructions="Be kind.")).body
    assert body["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Thought"},
        {"role": "user", "content": "<system>\nStay polite.\n</system>\n\nagain"},
    ]


def test_max_output_tokens_makes_it_incomplete(client):
    response = client.responses.create(model="echo/plain", input="a b c d e f g h", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"store": True}, "store", "store_unsupported"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "previous_response_unsupported"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]", None),
        ({"tools": [{"type": "computer_use_2099"}]}, "tools[0].type", None),
    ],
)
def test_what_cannot_be_served_is_a_400_that_names_it(client, extra, param, code):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="echo/plain", input="hi", **extra)
    error = raised.value.body
    assert error["param"] == param
    if code:
        assert error["code"] == code


def test_tools_for_a_model_without_tool_support_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="echo/prose", input="hi", tools=[WEATHER_TOOL])
    assert raised.value.body["code"] == "tools_unsupported"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="echo/prose",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )


def test_codex_shaped_request(client):
    """What Codex sends: developer messages, namespace and hosted tools, metadata, no max_output_tokens."""
    namespace = {
        "type": "namespace",
        "name": "weather_v1",
        "description": "Weather tools",
        "tools": [WEATHER_TOOL],
    }
    events = list(
        client.responses.create(
            model="echo/weather",
            input=[
                {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "Be precise."}],
                },
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            ],
            tools=[namespace, {"type": "web_search", "external_web_access": False}],
            tool_choice="auto",
            parallel_tool_calls=True,
            reasoning={"summary": "auto"},
            store=False,
            stream=True,
            include=["reasoning.encrypted_content"],
            prompt_cache_key="session-1",
            extra_body={"client_metadata": {"session_id": "session-1"}},
        )
    )
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "function_call"
    assert item.name == "get_weather"
    assert item.model_dump().get("namespace") == "weather_v1"
    assert events[-1].type == "response.completed"


def test_a_broken_generation_ends_with_response_failed(neuron, client):
    url, _ = neuron
    stream = client.responses.create(model="echo/slow", input="go", stream=True)
    kinds = []
    unloader = None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta" and unloader is None:
            unloader = threading.Thread(
                target=httpx.post, args=(f"{url}/models/unload",), kwargs={"json": {"model_id": "echo/slow"}}
            )
            unloader.start()
        if event.type == "response.failed":
            assert event.response.error.code == "model_unloaded"
    unloader.join()
    assert kinds[-1] == "response.failed"
    load(url, "echo/slow", tokens_per_second=20, script="tick " * 200)


def test_models_retrieve(client):
    model = client.models.retrieve("echo/plain")
    assert model.id == "echo/plain"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("echo/nonesuch")


def test_models_retrieve_answers_in_openai_envelope(neuron):
    response = httpx.get(f"{neuron[0]}/v1/models/echo/nonesuch")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
