"""Tool-call formats of every family, read from output split at every possible chunk boundary."""

from __future__ import annotations

import json

import pytest

from helexa.neuron.parsing import OutputParser
from helexa.neuron.toolformats import BUILTIN, ToolFormats

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
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
WEATHER = {"city": "Paris", "days": 2}

# (format, model output, expected content, expected calls)
CASES = [
    (
        "hermes",
        'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
        "</tool_call>",
        "Let me check. ",
        [("get_weather", WEATHER)],
    ),
    (
        "hermes",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
        "",
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    (
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        "",
        [("get_weather", WEATHER)],
    ),
    (
        "llama3",
        '<|python_tag|>{"type": "function", "name": "get_weather", '
        '"parameters": {"city": "Paris", "days": 2}}; '
        '{"name": "get_time", "parameters": {}}',
        "",
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    (
        "llama3",
        'Searching.<|python_tag|>brave_search.call(query="weather in Paris")<|eom_id|>',
        "Searching.",
        [("brave_search", {"query": "weather in Paris"})],
    ),
    (
        "mistral",
        'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}, '
        '{"name": "get_time", "arguments": {}}]',
        "Sure.",
        [("get_weather", WEATHER), ("get_time", {})],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 2}[TOOL_CALLS]get_time[ARGS]{}',
        "",
        [("get_weather", WEATHER), ("get_time", {})],
    ),
]


def run(fmt: str, chunks: list[str], think: tuple[str, str] | None = None) -> tuple[str, str, list]:
    parser = OutputParser(think, False, TOOLS, BUILTIN[fmt])
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    content = "".join(e.text for e in events if e.kind == "content")
    reasoning = "".join(e.text for e in events if e.kind == "reasoning")
    calls = [(e.call.name, json.loads(e.call.arguments)) for e in events if e.kind == "tool_call"]
    return content, reasoning, calls


@pytest.mark.parametrize(("fmt", "output", "content", "calls"), CASES)
def test_whole_output(fmt, output, content, calls):
    assert run(fmt, [output]) == (content, "", calls)


@pytest.mark.parametrize(("fmt", "output", "content", "calls"), CASES)
def test_every_chunk_boundary(fmt, output, content, calls):
    for cut in range(1, len(output)):
        assert run(fmt, [output[:cut], output[cut:]]) == (content, "", calls), cut
    for first in range(1, len(output), 7):  # three chunks: every second cut after each seventh first cut
        for second in range(first + 1, len(output)):
            parts = [output[:first], output[first:second], output[second:]]
            assert run(fmt, parts) == (content, "", calls), (first, second)


@pytest.mark.parametrize(("fmt", "output", "content", "calls"), CASES)
def test_character_by_character(fmt, output, content, calls):
    assert run(fmt, list(output)) == (content, "", calls)


def test_think_block_then_a_call_split_everywhere():
    output = '<think>The user wants weather.</think>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    for cut in range(1, len(output)):
        content, reasoning, calls = run("llama3", [output[:cut], output[cut:]], ("<think>", "</think>"))
        assert (content, reasoning, calls) == (
            "",
            "The user wants weather.",
            [("get_weather", {"city": "Paris"})],
        )


@pytest.mark.parametrize("fmt", ["hermes", "llama3", "mistral"])
def test_a_broken_call_comes_back_as_text(fmt):
    opener = {"hermes": "<tool_call>", "llama3": "<|python_tag|>", "mistral": "[TOOL_CALLS]"}[fmt]
    output = f"Here: {opener}{{not json"
    content, _, calls = run(fmt, [output])
    assert calls == []
    assert content == output


def test_json_answer_that_is_not_a_call_is_text():
    content, _, calls = run("llama3", ['{"answer": 42}'])
    assert (content, calls) == ('{"answer": 42}', [])


def test_without_tools_markers_are_text():
    parser = OutputParser(None, False, None, BUILTIN["mistral"])
    events = parser.feed('[TOOL_CALLS][{"name": "x", "arguments": {}}]') + parser.finish()
    assert [e.kind for e in events] == ["content"]


def test_format_is_detected_from_template_and_special_tokens():
    formats = ToolFormats()
    assert formats.choose(None, "{{ '<tool_call>' }}", []) == "hermes"
    assert formats.choose(None, "tools", ["<|begin_of_text|>", "<|python_tag|>"]) == "llama3"
    assert formats.choose(None, "tools", ["[INST]", "[TOOL_CALLS]"]) == "mistral"
    assert formats.choose("mistral", "<tool_call>", []) == "mistral"
    assert formats.choose("nonesuch", "<tool_call>", []) == "hermes"
    assert formats.markers() >= {"<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]"}


def test_repeated_open_think_marker_does_not_leak():
    parser = OutputParser(("<think>", "</think>"), True, None)
    events = parser.feed("<think>\nI should greet.</think>Hello!") + parser.finish()
    assert [(e.kind, e.text) for e in events] == [("reasoning", "I should greet."), ("content", "Hello!")]


@pytest.fixture(scope="module")
def neuron():
    import httpx
    from neurons import running_neuron

    with running_neuron(simulated_devices=[{"name": "s", "memory_mb": 4000}]) as (url, _):
        for fmt, output, _, _ in CASES:
            if fmt != "hermes":
                model = f"echo/{fmt}-{abs(hash(output)) % 10_000}"
                options = {"script": output, "tool_format": fmt}
                httpx.post(
                    f"{url}/models/load", json={"model_id": model, "options": options}
                ).raise_for_status()
        yield url


@pytest.mark.parametrize(("fmt", "output", "content", "calls"), [c for c in CASES if c[0] != "hermes"])
@pytest.mark.parametrize("stream", [False, True])
def test_through_the_neuron(neuron, fmt, output, content, calls, stream):
    import openai

    client = openai.OpenAI(base_url=f"{neuron}/v1", api_key="x", max_retries=0)
    model = f"echo/{fmt}-{abs(hash(output)) % 10_000}"
    request = {"model": model, "messages": [{"role": "user", "content": "?"}], "tools": TOOLS}
    if stream:
        text, got, finish = "", [], None
        for chunk in client.chat.completions.create(stream=True, **request):
            delta = chunk.choices[0].delta
            text += delta.content or ""
            got += [(c.function.name, json.loads(c.function.arguments)) for c in delta.tool_calls or []]
            finish = chunk.choices[0].finish_reason or finish
    else:
        message = client.chat.completions.create(**request).choices[0]
        text, finish = message.message.content or "", message.finish_reason
        got = [(c.function.name, json.loads(c.function.arguments)) for c in message.message.tool_calls or []]
    assert (text, got, finish) == (content, calls, "tool_calls")
