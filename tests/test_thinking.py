"""Thinking, prefill and what Claude Code sends, through the gateway with the real `anthropic` and
`openai` SDKs, in front of an echo neuron whose models think in scripted words."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest
from fleet import running_fleet

THOUGHT = " ".join(f"w{i}" for i in range(40))
SCRIPTS = {
    "t/think": f"<think>{THOUGHT}</think>The answer is 42.",
    "t/plain": "{last_user}",
    "t/small": "ok",
    "t/prefill": "Sure, here it is.",
}


@pytest.fixture(scope="module")
def fleet():
    models = [
        {"id": m, "harness": "echo", "vram_mb": 10, "options": {"size_mb": 10, "script": s}}
        for m, s in SCRIPTS.items()
    ]
    models[2]["options"]["max_model_len"] = 4000
    with running_fleet(
        {"n": {"simulated_devices": [{"name": "s", "memory_mb": 4000}]}}, {"models": models}
    ) as f:
        yield f


@pytest.fixture(scope="module")
def claude(fleet):
    return anthropic.Anthropic(base_url=fleet.url, api_key="any", max_retries=0)


@pytest.fixture(scope="module")
def oai(fleet):
    return openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="any", max_retries=0)


def blocks(message):
    return [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content]


def test_thinking_enabled_is_clean_and_signed(claude):
    message = claude.messages.create(
        model="t/think",
        max_tokens=500,
        thinking={"type": "enabled", "budget_tokens": 1000},
        messages=[{"role": "user", "content": "?"}],
    )
    assert blocks(message) == [("thinking", THOUGHT), ("text", "The answer is 42.")]
    assert message.content[0].signature  # non-empty, opaque
    # The signed block goes back in the next turn and is accepted.
    again = claude.messages.create(
        model="t/think",
        max_tokens=500,
        thinking={"type": "enabled", "budget_tokens": 1000},
        messages=[
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {"role": "user", "content": "And?"},
        ],
    )
    assert again.content[-1].text == "The answer is 42."


def test_streamed_thinking_carries_a_signature(claude):
    with claude.messages.stream(
        model="t/think",
        max_tokens=500,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == THOUGHT
    assert final.content[0].signature


def test_thinking_disabled_gives_no_thinking_block(claude):
    message = claude.messages.create(
        model="t/think",
        max_tokens=500,
        thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "?"}],
    )
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "The answer is 42."
    assert "<think>" not in message.model_dump_json()


@pytest.mark.parametrize("budget", [1, 5, 12])
def test_budget_caps_the_reasoning_then_the_answer_follows(claude, budget):
    message = claude.messages.create(
        model="t/think",
        max_tokens=500,
        thinking={"type": "enabled", "budget_tokens": budget},
        messages=[{"role": "user", "content": "?"}],
    )
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text"]
    thinking = message.content[0].thinking
    assert len(thinking.split()) <= budget  # echo tokens are words
    assert THOUGHT.startswith(thinking)
    assert message.content[1].text == "The answer is 42."


def test_reasoning_effort_none_turns_thinking_off(oai):
    answer = oai.chat.completions.create(
        model="t/think", reasoning_effort="none", messages=[{"role": "user", "content": "?"}]
    )
    message = answer.choices[0].message
    assert message.content == "The answer is 42."
    assert getattr(message, "reasoning_content", None) is None


def test_system_messages_inside_messages_reach_the_model(claude, fleet):
    # As Claude Code sends them: a system message after the user's turn.
    message = claude.messages.create(
        model="t/plain",
        max_tokens=500,
        system=[{"type": "text", "text": "You are helpful."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "say hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "The cwd is /tmp."}]},
        ],
    )
    assert message.content[0].text == "say hi\n\n<system>\nThe cwd is /tmp.\n</system>"


def test_claude_code_request_shape_is_served(fleet):
    """The fields Claude Code 2.1 sends with a non-Claude model: beta query and header, adaptive
    thinking with display, context_management, output_config.effort."""
    response = httpx.post(
        f"{fleet.url}/v1/messages?beta=true",
        headers={
            "x-api-key": "any",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,effort-2025-11-24",
        },
        json={
            "model": "t/think",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "?"}],
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"},
            "metadata": {"user_id": "u"},
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert [b["type"] for b in response.json()["content"]] == ["thinking", "text"]


def test_context_limit_errors_are_worded_as_anthropics(claude):
    with pytest.raises(anthropic.BadRequestError) as raised:
        # Streamed, as Claude Code asks: the refusal still comes as an HTTP 400 before any event.
        claude.messages.create(
            model="t/small", max_tokens=32000, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    message = raised.value.body["error"]["message"]
    assert message.startswith("input length and `max_tokens` exceed context limit: ")
    prompt, asked, limit = _numbers(message)
    assert (asked, limit) == (32000, 4000)
    # Retrying with what fits works, as with Anthropic's servers.
    answer = claude.messages.create(
        model="t/small", max_tokens=limit - prompt, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.content[0].text == "ok"
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model="t/small", max_tokens=10, messages=[{"role": "user", "content": "hi " * 5000}]
        )
    assert raised.value.body["error"]["message"].startswith("prompt is too long: ")


def _numbers(message: str) -> tuple[int, int, int]:
    head = message.split(": ", 1)[1].split(",")[0]
    left, limit = head.split(" > ")
    prompt, asked = left.split(" + ")
    return int(prompt), int(asked), int(limit)


def test_assistant_prefill_is_continued_in_both_apis(claude, oai):
    prefill = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Sure, here"}]
    message = claude.messages.create(model="t/prefill", max_tokens=100, messages=prefill)
    assert message.content[0].text == " it is."
    chat = oai.chat.completions.create(model="t/prefill", messages=prefill)
    assert chat.choices[0].message.content == " it is."
    # Without a prefill the whole script is said.
    whole = oai.chat.completions.create(model="t/prefill", messages=prefill[:1])
    assert whole.choices[0].message.content == "Sure, here it is."
