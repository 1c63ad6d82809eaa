"""Conversations that survive restarts: saved after every round, listed per project, compacted to fit.

A session is kept as OpenAI chat messages (what both providers are given). When a
session would no longer fit the model's context window, old tool outputs are
shortened first, then old assistant text; the user's turns and the last few
messages are always kept.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KEEP_LAST = 4
CHARS_PER_TOKEN = 3.5


@dataclass
class Session:
    id: str
    cwd: str
    mode: str = "default"
    model: str = ""
    title: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    updated_at: str = ""
    allowed_always: list[str] = field(default_factory=list)
    """Tools the user allowed for the rest of this session."""


def project_id(cwd: str) -> str:
    return hashlib.sha256(cwd.encode()).hexdigest()[:12]


class SessionStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder / "sessions"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, session_id: str) -> Path:
        if not session_id.replace("-", "").isalnum():
            raise ValueError(f"not a session id: {session_id!r}")
        return self.folder / f"{session_id}.json"

    def new_id(self) -> str:
        existing = {p.stem for p in self.folder.glob("hxa-*.json")}
        n = len(existing) + 1
        while f"hxa-{n}" in existing:
            n += 1
        return f"hxa-{n}"

    def save(self, session: Session) -> None:
        session.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        target = self.path(session.id)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(session)), encoding="utf-8")
        temporary.replace(target)  # never a half-written session

    def load(self, session_id: str) -> Session | None:
        path = self.path(session_id)
        if not path.exists():
            return None
        return Session(**json.loads(path.read_text(encoding="utf-8")))

    def list(self, cwd: str | None) -> list[Session]:
        found = []
        for path in self.folder.glob("*.json"):
            try:
                session = Session(**json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                continue
            if cwd is None or session.cwd == cwd:
                found.append(session)
        return sorted(found, key=lambda s: s.updated_at, reverse=True)


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    return int(sum(len(json.dumps(m)) for m in messages) / CHARS_PER_TOKEN)


def compact(messages: list[dict[str, Any]], budget_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """Shorten the conversation until it fits ``budget_tokens``; returns it and how many messages changed."""
    out = [dict(m) for m in messages]
    changed = 0
    protected = set(range(max(0, len(out) - KEEP_LAST), len(out)))
    for role in ("tool", "assistant"):
        for i, message in enumerate(out):
            if estimate_tokens(out) <= budget_tokens:
                return out, changed
            if i in protected or message["role"] != role or not message.get("content"):
                continue
            content = (
                message["content"] if isinstance(message["content"], str) else json.dumps(message["content"])
            )
            if content.startswith("[elided"):
                continue
            message["content"] = f"[elided to save context: {len(content)} characters]"
            changed += 1
    return out, changed


def user_content(prompt: list[Any]) -> str | list[dict[str, Any]]:
    """An editor's prompt blocks as a chat message's content (text, images, embedded files)."""
    parts: list[dict[str, Any]] = []
    for block in prompt:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append({"type": "text", "text": block.text})
        elif kind == "image":
            parts.append(
                {"type": "image_url", "image_url": {"url": f"data:{block.mime_type};base64,{block.data}"}}
            )
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(
                {"type": "text", "text": f'<file uri="{block.resource.uri}">\n{block.resource.text}\n</file>'}
            )
        elif kind == "resource_link":
            parts.append({"type": "text", "text": f"(see {block.uri})"})
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def text_of(content: Any) -> str:
    """The text of a message's content, whatever its shape."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "[image]") for p in content if isinstance(p, dict))
    return ""
