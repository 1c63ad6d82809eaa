"""Structured outputs, forced tool calls, logprobs, n, logit_bias and best_of on an echo neuron,
through the real `openai` SDK (and Anthropic's through the gateway)."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
from fleet import running_fleet
from neurons import running_neuron

SIM = [{"name": "sim0", "memory_mb": 8000}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["colour", "tags"],
}
TWO_CALLS = (
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}</tool_call>'
)


def load(url: str, model_id: str, **options) -> None:
    response = httpx.post(f"{url}/models/load", json={"model_id": model_id, "options": options}, timeout=30)
    response.raise_for_status()


@pytest.fixture(scope="module")
def neuron():
    with running_neuron(simulated_devices=SIM) as (url, service):
        load(url, "echo/plain")
        load(url, "echo/json", script='{"colour": "blue", "tags": ["sky"]}')
        load(url, "echo/two-calls", script=TWO_CALLS)
        load(url, "echo/xml", chat_template="{{ tools }} <function=name>", script="no call here")
        yield url, service


@pytest.fixture(scope="module")
def client(neuron):
    return openai.OpenAI(base_url=f"{neuron[0]}/v1", api_key="unused", max_retries=0)


def chat(client, model="echo/plain", content="hello there", **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_json_schema_answer_follows_the_schema(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "pick", "schema": SCHEMA, "strict": True}}
    scripted = chat(client, "echo/json", response_format=fmt).choices[0].message.content
    assert json.loads(scripted) == {"colour": "blue", "tags": ["sky"]}  # the script fits: said as is
    forced = chat(client, "echo/plain", content="not json at all", response_format=fmt)
    assert json.loads(forced.choices[0].message.content) == {"colour": "red", "tags": []}
    obj = chat(client, content="plain words", response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "fmt, param",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_bad_response_format_is_a_400_naming_it(client, fmt, param):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, response_format=fmt)
    assert param in caught.value.body["param"]


def test_required_and_named_tool_choice_force_a_call(client):
    required = chat(client, content="just chatting", tools=TOOLS, tool_choice="required").choices[0]
    assert required.finish_reason == "tool_calls"
    call = required.message.tool_calls[0].function
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "", "days": 0}
    named = chat(
        client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}
    ).choices[0]
    assert [c.function.name for c in named.message.tool_calls] == ["get_time"]
    xml = chat(client, "echo/xml", tools=TOOLS, tool_choice="required").choices[0]
    assert xml.message.tool_calls[0].function.name == "get_weather"  # in the model's Qwen XML form


def test_named_tool_not_in_tools_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="not in tools") as caught:
        chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "launch"}})
    assert caught.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError, match="needs tools"):
        chat(client, tool_choice="required")


def test_tool_choice_none_keeps_tools_out_of_the_prompt(client):
    plain = chat(client).usage.prompt_tokens
    offered = chat(client, tools=TOOLS).usage.prompt_tokens
    hidden = chat(client, tools=TOOLS, tool_choice="none").usage.prompt_tokens
    assert offered > plain and hidden == plain


def test_parallel_tool_calls_false_allows_one_call(client):
    both = chat(client, "echo/two-calls", tools=TOOLS).choices[0].message.tool_calls
    assert len(both) == 2
    one = chat(client, "echo/two-calls", tools=TOOLS, parallel_tool_calls=False).choices[0]
    assert [c.function.name for c in one.message.tool_calls] == ["get_time"]
    assert one.finish_reason == "tool_calls"


def test_logprobs_chat_and_completions_stream_and_not(client):
    answer = chat(client, content="one two three", logprobs=True, top_logprobs=2)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert "".join(e.token for e in entries) == "one two three"
    assert all(e.logprob == 0.0 and len(e.top_logprobs) == 1 for e in entries)
    chunks = list(chat(client, content="one two three", logprobs=True, stream=True))
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert chat(client).choices[0].logprobs is None
    text = client.completions.create(model="echo/plain", prompt="a b c", logprobs=3)
    assert text.choices[0].logprobs.tokens == ["a", " b", " c"]
    assert text.choices[0].logprobs.text_offset == [0, 1, 3]
    pieces = list(client.completions.create(model="echo/plain", prompt="a b c", logprobs=0, stream=True))
    tokens = [t for p in pieces if p.choices[0].logprobs for t in p.choices[0].logprobs.tokens]
    assert tokens == ["a", " b", " c"]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"best_of": 2}, "best_of"),
        ({"logit_bias": {"abc": 5}}, "logit_bias"),
        ({"logit_bias": {"3": 500}}, "logit_bias"),
        ({"n": 17}, "n"),
        ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs.regex"),
    ],
)
def test_refused_parameters_name_themselves(neuron, extra, param):
    body = {"model": "echo/plain", "messages": [{"role": "user", "content": "x"}], **extra}
    response = httpx.post(f"{neuron[0]}/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert param in (error.get("param") or "") + error["message"]


def test_completions_logprobs_over_20_refused(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="echo/plain", prompt="a", logprobs=21)


def test_n_choices_whole_and_streamed(client):
    answer = chat(client, content="a b", n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content == "a b" for c in answer.choices)
    single = chat(client, content="a b").usage
    assert answer.usage.prompt_tokens == single.prompt_tokens
    assert answer.usage.completion_tokens == 3 * single.completion_tokens
    chunks = list(chat(client, content="a b", n=2, stream=True, stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: "a b", 1: "a b"} and finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].usage.completion_tokens == 2 * single.completion_tokens
    text = client.completions.create(model="echo/plain", prompt="x y", n=2)
    assert [c.text for c in text.choices] == ["x y", "x y"]


def test_anthropic_forced_tools_and_output_format_through_the_gateway():
    catalogue = {
        "models": [
            {"id": "s/echo", "harness": "echo", "vram_mb": 10, "options": {"size_mb": 10, "script": "prose"}}
        ]
    }
    tools = [
        {
            "name": "get_weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    with running_fleet({"n": {"simulated_devices": [{"name": "s", "memory_mb": 4000}]}}, catalogue) as fleet:
        client = anthropic.Anthropic(base_url=fleet.url, api_key="k", max_retries=0)
        ask = {"model": "s/echo", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        forced = client.messages.create(**ask, tools=tools, tool_choice={"type": "tool", "name": "get_time"})
        assert forced.stop_reason == "tool_use"
        assert [b.name for b in forced.content if b.type == "tool_use"] == ["get_time"]
        anyone = client.messages.create(**ask, tools=tools, tool_choice={"type": "any"})
        assert [b.input for b in anyone.content if b.type == "tool_use"] == [{"city": ""}]
        shaped = client.messages.create(
            **ask, extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
        )
        assert json.loads(shaped.content[0].text) == {"colour": "red", "tags": []}
        with pytest.raises(anthropic.BadRequestError, match=r"output_config\.format\.type"):
            client.messages.create(**ask, extra_body={"output_config": {"format": {"type": "xml"}}})
