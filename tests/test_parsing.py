"""Stop strings, reasoning and tool-call parsing of streamed model output."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from helexa.neuron.parsing import OutputParser, StopMatcher, parse_tool_call, prompt_in_reasoning

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                    "extra": {"type": "object"},
                },
            },
        },
    }
]


def feed_all(matcher_or_parser, pieces):
    out = []
    for piece in pieces:
        out.append(matcher_or_parser.feed(piece))
    return out


def test_stop_string_split_across_pieces_is_not_emitted():
    stop = StopMatcher(["END"])
    assert feed_all(stop, ["Hello E", "N", "D and more"]) == ["Hello ", "", ""]
    assert stop.matched == "END"


def test_held_text_is_released_when_it_was_not_a_stop():
    stop = StopMatcher(["END"])
    assert feed_all(stop, ["Hello E", "N", "jo"]) == ["Hello ", "", "ENjo"]
    assert stop.matched is None


def test_earliest_stop_wins():
    stop = StopMatcher(["world", "lo"])
    assert stop.feed("hello world") == "hel"
    assert stop.matched == "lo"


@given(st.text(max_size=40), st.lists(st.integers(1, 5), max_size=10))
def test_stop_matcher_never_loses_or_invents_text(text, cuts):
    stop = StopMatcher(["<<", "xyz"])
    pieces, rest = [], text
    for cut in cuts:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    out = "".join(stop.feed(p) for p in pieces)
    if stop.matched is None:
        assert out + stop.flush() == text
    else:
        assert text.startswith(out)
        assert text[len(out) :].startswith(stop.matched)


def run(parser, pieces):
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.finish())
    merged = []
    for event in events:
        if merged and event.kind == merged[-1].kind and event.kind != "tool_call":
            merged[-1] = event._replace(text=merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged


def test_reasoning_split_from_content_char_by_char():
    parser = OutputParser(think=("<think>", "</think>"))
    events = run(parser, list("<think>\nweigh it up\n</think>\n\nThe answer."))
    assert [(e.kind, e.text) for e in events] == [("reasoning", "weigh it up\n"), ("content", "The answer.")]


def test_prompt_that_opened_think_starts_in_reasoning():
    assert prompt_in_reasoning("<|im_start|>assistant\n<think>\n", ("<think>", "</think>"))
    assert not prompt_in_reasoning("<think>x</think> hi", ("<think>", "</think>"))
    parser = OutputParser(think=("<think>", "</think>"), in_reasoning=True)
    events = run(parser, ["hmm", "</thi", "nk>", "yes"])
    assert [(e.kind, e.text) for e in events] == [("reasoning", "hmm"), ("content", "yes")]


def test_hermes_tool_call_with_text_before():
    parser = OutputParser(tools=TOOLS)
    body = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    events = run(parser, ["Let me check. ", body[:9], body[9:30], body[30:]])
    assert events[0] == ("content", "Let me check. ", None)
    assert events[1].kind == "tool_call"
    assert events[1].call.name == "get_weather"
    assert json.loads(events[1].call.arguments) == {"city": "Paris"}
    assert events[1].call.id.startswith("call_")


def test_two_tool_calls():
    parser = OutputParser(tools=TOOLS)
    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>'
    )
    calls = [e.call for e in run(parser, [text]) if e.kind == "tool_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Oslo", "Rome"]
    assert calls[0].id != calls[1].id


def test_qwen_function_form_typed_by_schema():
    body = (
        "<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
        '<parameter=extra>\n{"a": [1]}\n</parameter>\n</function>'
    )
    call = parse_tool_call(body, TOOLS)
    assert json.loads(call.arguments) == {"city": "New York", "days": 3, "metric": True, "extra": {"a": [1]}}


def test_unknown_parameter_types_are_sniffed():
    call = parse_tool_call("<function=other><parameter=n>42</parameter><parameter=s>hi</parameter>", TOOLS)
    assert json.loads(call.arguments) == {"n": 42, "s": "hi"}


def test_unparseable_call_is_kept_as_content():
    parser = OutputParser(tools=TOOLS)
    events = run(parser, ["<tool_call>{not json</tool_call> after"])
    assert [(e.kind, e.text) for e in events] == [("content", "<tool_call>{not json</tool_call> after")]


def test_unterminated_call_at_the_end_is_content():
    parser = OutputParser(tools=TOOLS)
    events = run(parser, ['<tool_call>{"name": "get_we'])
    assert [(e.kind, e.text) for e in events] == [("content", '<tool_call>{"name": "get_we')]


def test_without_tools_tool_markup_is_plain_content():
    parser = OutputParser()
    events = run(parser, ['<tool_call>{"name": "x"}</tool_call>'])
    assert [(e.kind, e.text) for e in events] == [("content", '<tool_call>{"name": "x"}</tool_call>')]


@given(st.text(alphabet="ab<>/thinkol_c {}", max_size=60), st.integers(1, 7))
def test_how_text_is_split_into_pieces_does_not_change_the_result(text, step):
    def parse(pieces):
        parser = OutputParser(think=("<think>", "</think>"), tools=TOOLS)
        return [(e.kind, e.text, e.call and e.call.name) for e in run(parser, pieces)]

    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    assert parse(pieces) == parse([text])
    if "<" not in text:
        assert "".join(t for _, t, _ in parse(pieces)) == text
