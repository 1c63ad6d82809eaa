"""A finished OpenAI chat completion -> an Anthropic Message."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(
    finish: str | None, matched: str | None, stop_sequences: list[str] | None
) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for an OpenAI finish_reason (and vLLM's matched stop)."""
    if finish == "stop" and matched and matched in (stop_sequences or []):
        return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def signature(thinking: str) -> str:
    """An opaque, non-empty signature for a thinking block (clients require one and send it back).

    Nothing here needs to verify it: the thinking text itself is what goes back to the model.
    """
    digest = hashlib.sha256(thinking.encode()).digest()[:24]
    return "hx1" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def context_limit_message(error: dict[str, Any]) -> str | None:
    """Anthropic's wording of a context-limit error (clients parse it to retry with less), or None.

    ``error`` is the neuron's OpenAI error object with ``code: context_length_exceeded``
    and the counts ``prompt_len``, ``max`` and, when the completion was the problem, ``max_tokens``.
    """
    if error.get("code") != "context_length_exceeded":
        return None
    prompt, limit, asked = error.get("prompt_len"), error.get("max"), error.get("max_tokens")
    if not isinstance(prompt, int) or not isinstance(limit, int):
        return None
    if isinstance(asked, int) and prompt < limit:
        return (
            f"input length and `max_tokens` exceed context limit: {prompt} + {asked} > {limit}, "
            "decrease input length or `max_tokens` and try again"
        )
    return f"prompt is too long: {prompt} tokens > {limit} maximum"


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool arguments as an object, whatever shape they came in; unparseable text is kept, not dropped."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return {"_raw_arguments": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": int(cached),
    }


def to_anthropic(completion: dict[str, Any], model: str, stop_sequences: list[str] | None) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        thinking = message["reasoning_content"]
        content.append({"type": "thinking", "thinking": thinking, "signature": signature(thinking)})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + secrets.token_hex(8),
                "name": function.get("name", ""),
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(completion.get("usage")),
    }
