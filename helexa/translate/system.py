"""System messages where chat templates accept them.

Agents send system (or developer) messages anywhere in a conversation: Claude Code
puts reminders inside ``messages``, Codex sends developer messages beside the user's.
Most chat templates take one system message, first, and refuse any other. So: the
system messages before the first turn become that one system message; a later one
is folded into the next user turn (or, at the end, the previous one), marked as a
system note, so what it says still reaches the model.
"""

from __future__ import annotations

from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return ""


def _prepend(message: dict[str, Any], note: str) -> None:
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = [{"type": "text", "text": note}, *content]
    else:
        message["content"] = note + ("\n\n" + content if content else "")


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with at most one system message, first; the others folded into user turns."""
    head: list[str] = []
    rest: list[dict[str, Any]] = []
    notes: list[str] = []
    for message in messages:
        if message["role"] == "system":
            text = _text(message.get("content"))
            if not rest:
                head.append(text)
            elif text:
                notes.append(text)
            continue
        if notes and message["role"] == "user":
            message = dict(message)
            _prepend(message, "\n\n".join(f"<system>\n{n}\n</system>" for n in notes))
            notes = []
        rest.append(message)
    if notes:
        users = [m for m in rest if m["role"] == "user"]
        note = "\n\n".join(f"<system>\n{n}\n</system>" for n in notes)
        if users:
            target = dict(users[-1])
            rest[rest.index(users[-1])] = target
            content = target.get("content")
            if isinstance(content, list):
                target["content"] = [*content, {"type": "text", "text": note}]
            else:
                target["content"] = (content + "\n\n" if content else "") + note
        else:
            rest.append({"role": "user", "content": note})
    system = "\n\n".join(t for t in head if t)
    return ([{"role": "system", "content": system}] if system else []) + rest
