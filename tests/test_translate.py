"""Anthropic <-> OpenAI translation: request and response mapping, golden event sequences, properties."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helexa.errors import ApiError
from helexa.translate.request import to_anthropic_messages, to_openai
from helexa.translate.response import signature, to_anthropic
from helexa.translate.stream import StreamTranslator
from helexa.wire.anthropic import MessagesRequest


def request(**fields) -> MessagesRequest:
    fields.setdefault("model", "m")
    fields.setdefault("max_tokens", 64)
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return msgspec.convert(fields, MessagesRequest)


def test_system_blocks_tools_choice_stops_and_thinking():
    body = to_openai(
        request(
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            tools=[{"name": "read", "description": "read a file", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            thinking={"type": "enabled", "budget_tokens": 1000},
            metadata={"user_id": "u"},
            stream=True,
        ),
        "real/model",
    )
    assert body["model"] == "real/model"
    assert body["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "read", "description": "read a file", "parameters": {"type": "object"}},
        }
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.2, 0.9, 5)
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["stream_options"]["include_usage"] is True


def test_named_tool_choice_and_none():
    named = to_openai(
        request(tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": "tool", "name": "t"}), "m"
    )
    assert named["tool_choice"] == {"type": "function", "function": {"name": "t"}}
    none = to_openai(request(tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": "none"}), "m")
    assert none["tool_choice"] == "none"


def test_tool_use_and_results_in_order_with_errors_kept():
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two calls", "signature": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "20C"}],
                },
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data", "is_error": True},
                {"type": "text", "text": "Summarise."},
            ],
        },
    ]
    out = to_openai(request(messages=messages), "m")["messages"]
    assert out[1]["tool_calls"][1]["function"] == {"name": "w", "arguments": '{"city": "Rome"}'}
    assert out[1]["content"] == "Checking." and out[1]["reasoning_content"] == "two calls"
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "20C"}
    assert out[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"}
    assert out[4] == {"role": "user", "content": "Summarise."}


def test_images_base64_and_url():
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        {"type": "text", "text": "what?"},
    ]
    parts = to_openai(request(messages=[{"role": "user", "content": content}]), "m")["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}
    assert parts[1]["image_url"]["url"] == "https://x/y.png"


@pytest.mark.parametrize(
    "block",
    [
        {"type": "document", "source": {}},
        {"type": "server_tool_use"},
        {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "video"}]},
    ],
)
def test_unknown_blocks_are_a_400_naming_the_type(block):
    with pytest.raises(ApiError) as err:
        to_openai(request(messages=[{"role": "user", "content": [block]}]), "m")
    assert err.value.status == 400
    assert repr((block.get("content") or [block])[0]["type"]) in err.value.message


def test_max_tokens_is_required():
    with pytest.raises(msgspec.ValidationError, match="max_tokens"):
        msgspec.convert({"model": "m", "messages": []}, MessagesRequest)


def test_response_with_thinking_text_tools_and_stop_sequence():
    completion = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "Let me look.",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {"id": "call_1", "function": {"name": "w", "arguments": '{"city": "Oslo"}'}},
                        {"id": "call_2", "function": {"name": "w", "arguments": "not json"}},
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    message = to_anthropic(completion, "alias/m", None)
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert message["content"][2]["input"] == {"city": "Oslo"}
    assert message["content"][3]["input"] == {"_raw_arguments": "not json"}
    assert message["stop_reason"] == "tool_use" and message["model"] == "alias/m"
    assert message["usage"] == {
        "input_tokens": 12,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }
    stopped = to_anthropic(
        {"choices": [{"finish_reason": "stop", "stop_reason": "END", "message": {"content": "x"}}]},
        "m",
        ["END"],
    )
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    assert (
        to_anthropic({"choices": [{"finish_reason": "length", "message": {"content": "x"}}]}, "m", None)[
            "stop_reason"
        ]
        == "max_tokens"
    )


# --- streaming: golden sequences ---------------------------------------------------------


def chunk(delta=None, finish=None, usage=None, **choice):
    out = {
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}]
        if delta is not None or finish
        else []
    }
    if usage:
        out["usage"] = usage
    return out


def call(index, name=None, arguments="", call_id=None):
    item = {"index": index, "function": {"arguments": arguments}}
    if name:
        item.update(id=call_id or f"call_{index}", type="function")
        item["function"]["name"] = name
    return {"tool_calls": [item]}


def translate(chunks, stops=None):
    translator = StreamTranslator("m", stops)
    events = [e for c in chunks for e in translator.feed(c)] + translator.finish()
    return translator, events


def shape(events):
    out = []
    for name, data in events:
        if name == "content_block_start":
            out.append(f"start:{data['index']}:{data['content_block']['type']}")
        elif name == "content_block_delta":
            delta = data["delta"]
            value = (
                delta.get("text")
                or delta.get("thinking")
                or delta.get("partial_json")
                or delta.get("signature")
            )
            out.append(f"delta:{data['index']}:{delta['type']}:{value}")
        elif name == "content_block_stop":
            out.append(f"stop:{data['index']}")
        elif name == "message_delta":
            out.append(f"message_delta:{data['delta']['stop_reason']}:{data['usage']['output_tokens']}")
        else:
            out.append(name)
    return out


USAGE = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
GOLDEN = {
    "text": (
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            chunk(usage=USAGE),
        ],
        [
            "message_start",
            "start:0:text",
            "delta:0:text_delta:Hel",
            "delta:0:text_delta:lo",
            "stop:0",
            "message_delta:end_turn:5",
            "message_stop",
        ],
    ),
    "thinking": (
        [
            chunk({"reasoning_content": "hmm"}),
            chunk({"content": "ok"}),
            chunk({}, "stop"),
            chunk(usage=USAGE),
        ],
        [
            "message_start",
            "start:0:thinking",
            "delta:0:thinking_delta:hmm",
            f"delta:0:signature_delta:{signature('hmm')}",
            "stop:0",
            "start:1:text",
            "delta:1:text_delta:ok",
            "stop:1",
            "message_delta:end_turn:5",
            "message_stop",
        ],
    ),
    "one_tool": (
        [chunk(call(0, "w", '{"city": "Oslo"}')), chunk({}, "tool_calls"), chunk(usage=USAGE)],
        [
            "message_start",
            "start:0:tool_use",
            'delta:0:input_json_delta:{"city": "Oslo"}',
            "stop:0",
            "message_delta:tool_use:5",
            "message_stop",
        ],
    ),
    "two_tools": (
        [
            chunk(call(0, "w", '{"a":')),
            chunk(call(0, arguments=" 1}")),
            chunk(call(1, "v", "{}")),
            chunk({}, "tool_calls"),
            chunk(usage=USAGE),
        ],
        [
            "message_start",
            "start:0:tool_use",
            'delta:0:input_json_delta:{"a":',
            "delta:0:input_json_delta: 1}",
            "stop:0",
            "start:1:tool_use",
            "delta:1:input_json_delta:{}",
            "stop:1",
            "message_delta:tool_use:5",
            "message_stop",
        ],
    ),
    "text_then_tool": (
        [
            chunk({"content": "Let me check."}),
            chunk(call(0, "w", '{"c": 1}')),
            chunk({}, "tool_calls"),
            chunk(usage=USAGE),
        ],
        [
            "message_start",
            "start:0:text",
            "delta:0:text_delta:Let me check.",
            "stop:0",
            "start:1:tool_use",
            'delta:1:input_json_delta:{"c": 1}',
            "stop:1",
            "message_delta:tool_use:5",
            "message_stop",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_event_sequences(case):
    chunks, expected = GOLDEN[case]
    _, events = translate(chunks)
    assert shape(events) == expected


def test_message_start_has_the_full_usage_shape_and_input_tokens_come_early_when_known():
    translator = StreamTranslator("alias", [])
    start = translator.feed(
        {
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            "usage": {"prompt_tokens": 33, "completion_tokens": 0},
        }
    )[0][1]
    assert start["message"]["usage"] == {
        "input_tokens": 33,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert start["message"]["model"] == "alias"


def test_stop_sequence_reported_and_finish_is_idempotent():
    translator, events = translate([chunk({"content": "a"}), chunk({}, "stop", stop_reason="END")], ["END"])
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert translator.finish() == []


def test_a_stream_cut_short_still_closes_the_message():
    _, events = translate([chunk({"content": "partial"})])
    assert shape(events)[-3:] == ["stop:0", "message_delta:end_turn:1", "message_stop"]


# --- properties -----------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def openai_streams(draw):
    """Chunk sequences like OpenAI-compatible servers send: pieces of reasoning, text and tool calls."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    calls = 0
    expected_args = []
    for kind in draw(st.lists(st.sampled_from(["text", "reasoning", "tool"]), max_size=8)):
        if kind == "tool":
            arguments = json.dumps(draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3)))
            cuts = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=3)))
            pieces = [arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)], strict=True)]
            chunks.append(chunk(call(calls, "fn", pieces[0])))
            chunks += [chunk(call(calls, arguments=p)) for p in pieces[1:] if p]
            expected_args.append(arguments)
            calls += 1
        else:
            key = "content" if kind == "text" else "reasoning_content"
            chunks += [chunk({key: piece}) for piece in draw(st.lists(texts, min_size=1, max_size=3))]
    chunks.append(chunk({}, draw(st.sampled_from(["stop", "length", "tool_calls"]))))
    if draw(st.booleans()):
        chunks.append(chunk(usage=USAGE))
    return chunks, expected_args


@settings(max_examples=200, deadline=None)
@given(openai_streams())
def test_any_openai_stream_becomes_a_well_formed_anthropic_stream(case):
    chunks, expected_args = case
    _, events = translate(chunks)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-1] == "message_stop" and names.count("message_stop") == 1
    assert names[-2] == "message_delta"
    open_index, last_index, tool_args = None, -1, {}
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None
            assert data["index"] == last_index + 1
            open_index = last_index = data["index"]
            if data["content_block"]["type"] == "tool_use":
                tool_args[open_index] = ""
        elif name == "content_block_delta":
            assert data["index"] == open_index
            if data["delta"]["type"] == "input_json_delta":
                tool_args[open_index] += data["delta"]["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    assert [json.loads(a or "{}") for a in tool_args.values()] == [json.loads(a) for a in expected_args]
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    got = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert got == sent


blocks_user = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(
        lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}},
        st.text(alphabet="ABCD", min_size=1, max_size=6),
    ),
)
tool_results = st.builds(
    lambda i, t, e: {
        "type": "tool_result",
        "tool_use_id": f"toolu_{i}",
        "content": t,
        **({"is_error": True} if e else {}),
    },
    st.integers(0, 9),
    texts,
    st.booleans(),
)
blocks_assistant = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(
        lambda i, d: {"type": "tool_use", "id": f"toolu_{i}", "name": "fn", "input": d},
        st.integers(0, 9),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    ),
)


@st.composite
def conversations(draw):
    messages = []
    for turn in range(draw(st.integers(1, 5))):
        if turn % 2 == 0:
            results = draw(st.lists(tool_results, max_size=2)) if turn else []
            content = results + draw(st.lists(blocks_user, min_size=0 if results else 1, max_size=3))
            if (
                content
                and not results
                and draw(st.booleans())
                and content[0]["type"] == "text"
                and len(content) == 1
            ):
                content = content[0]["text"]
            messages.append({"role": "user", "content": content})
        else:
            messages.append(
                {"role": "assistant", "content": draw(st.lists(blocks_assistant, min_size=1, max_size=3))}
            )
    return messages


def normal(messages):
    """String content as one text block, and blocks in the order OpenAI messages can express: a user
    turn's tool results first, an assistant turn's text before its tool calls. Nothing else may change."""
    out = []
    order = {"tool_result": 0, "thinking": 1, "text": 2, "image": 2, "tool_use": 3}
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks = sorted(blocks, key=lambda b: order[b["type"]])
        out.append({"role": message["role"], "content": blocks})
    return out


@settings(max_examples=200, deadline=None)
@given(conversations(), st.one_of(st.none(), texts))
def test_a_request_round_trip_keeps_every_message_and_block(messages, system):
    body = to_openai(request(messages=messages, system=system), "m")
    back_system, back = to_anthropic_messages(body["messages"])
    assert back_system == system
    assert normal(back) == normal(messages)
