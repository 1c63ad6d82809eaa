"""Turning generated text into OpenAI's shapes: stop strings, reasoning and tool calls.

Pure, incremental state machines: they take text as the model produces it and say
what can be sent now, holding back only what might still turn into a marker. No I/O.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, NamedTuple

THINK_MARKERS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"), ("<thought>", "</thought>"))


def held_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest end of ``text`` that is the start of some marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


class StopMatcher:
    """Finds stop strings in streamed text; text that may begin a stop string is held back."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Text safe to emit now. After a match, `matched` is set and the rest is dropped."""
        if not self.stops:
            return text
        if self.matched is not None:
            return ""
        buffer = self.held + text
        hits = [(buffer.find(s), s) for s in self.stops if s in buffer]
        if hits:
            index, self.matched = min(hits)
            self.held = ""
            return buffer[:index]
        keep = held_suffix(buffer, self.stops)
        self.held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class ToolCallOut(NamedTuple):
    id: str
    name: str
    arguments: str
    """The arguments as a JSON object string."""


class Event(NamedTuple):
    kind: str  # content | reasoning | tool_call
    text: str = ""
    call: ToolCallOut | None = None


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class OutputParser:
    """Splits model output into content, reasoning and tool calls.

    Reasoning is text between think markers (or from the start, when the prompt
    ended inside an open think block); an open marker repeated inside the block is
    dropped, so no marker leaks. Tool calls are found and read by the model's
    `helexa.neuron.toolformats.ToolFormat` (Hermes ``<tool_call>`` by default); a
    body that does not parse is returned as content, so nothing the model said is lost.
    """

    def __init__(
        self,
        think: tuple[str, str] | None = None,
        in_reasoning: bool = False,
        tools: list[dict[str, Any]] | None = None,
        fmt: Any = None,
    ) -> None:
        if fmt is None:
            from helexa.neuron.toolformats import DEFAULT  # toolformats builds on this module

            fmt = DEFAULT
        self.fmt = fmt
        self.think = think
        self.tools = tools
        self.state = "reasoning" if in_reasoning and think else "content"
        self.buffer = ""
        self.opener = ""
        self.strip_leading = self.state == "reasoning"
        self.fresh = bool(tools) and fmt.whole_answer
        """No content yet: the answer may still turn out to be a bare call (Llama 3's JSON)."""

    def _markers(self) -> list[str]:
        if self.state == "reasoning":
            return list(self.think) if self.think else []
        if self.state == "tool":
            return [self.fmt.close] if self.fmt.close else []
        markers = list(self.fmt.opens) if self.tools else []
        return [*markers, self.think[0]] if self.think else markers

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        events: list[Event] = []
        while True:
            if self.fresh and self.state == "content":
                start = self.buffer.lstrip()
                if not start:
                    return events
                self.fresh = False
                if start[0] == "{":
                    self.state, self.opener, self.buffer = "tool", "", start
            markers = self._markers()
            hits = [(self.buffer.find(m), m) for m in markers if m in self.buffer]
            if not hits:
                if self.state != "tool":
                    keep = held_suffix(self.buffer, markers)
                    self._emit(events, self.buffer[: len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep :]
                return events
            index, marker = min(hits)
            before, self.buffer = self.buffer[:index], self.buffer[index + len(marker) :]
            self._transition(events, before, marker)

    def _calls(self, events: list[Event], body: str, close: str) -> None:
        calls = self.fmt.parse(body, self.tools)
        if calls:
            events.extend(Event("tool_call", call=call) for call in calls)
        else:
            self.state = "content"
            self._emit(events, self.opener + body + close)
        self.state = "content"

    def _transition(self, events: list[Event], before: str, marker: str) -> None:
        if self.state == "tool":
            self._calls(events, before, marker)
            return
        if self.state == "reasoning":
            self._emit(events, before)
            if marker == self.think[1]:  # type: ignore[index]
                self.state, self.strip_leading = "content", True
                self.fresh = bool(self.tools) and self.fmt.whole_answer
            return  # an open marker inside the block: dropped
        self._emit(events, before)
        if self.think and marker == self.think[0]:
            self.state, self.strip_leading = "reasoning", True
        else:
            self.state, self.opener = "tool", marker

    def _emit(self, events: list[Event], text: str) -> None:
        if self.strip_leading:
            text = text.lstrip()
            if text:
                self.strip_leading = False
        if text:
            kind = "reasoning" if self.state == "reasoning" else "content"
            if kind == "content":
                self.fresh = False
            if events and events[-1].kind == kind:
                events[-1] = Event(kind, events[-1].text + text)
            else:
                events.append(Event(kind, text))

    def finish(self) -> list[Event]:
        """Flush at the end of generation: an unterminated call is read if it parses, else it is content."""
        events: list[Event] = []
        rest, self.buffer = self.buffer, ""
        if self.state == "tool":
            self._calls(events, rest, "")
        else:
            self.fresh = False
            self._emit(events, rest)
        return events


_FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?:</function>|$)", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.S)


def parse_tool_call(body: str, tools: list[dict[str, Any]] | None) -> ToolCallOut | None:
    """One tool call from a ``<tool_call>`` body, or None if it is neither form."""
    text = body.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            return None
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCallOut(new_call_id(), name, json.dumps(args, ensure_ascii=False))
    match = _FUNCTION.search(text)
    if match is None:
        return None
    name, inner = match[1], match[2]
    schema = _schema_for(name, tools)
    args = {key: _typed(value, schema.get(key, {})) for key, value in _PARAMETER.findall(inner)}
    return ToolCallOut(new_call_id(), name, json.dumps(args, ensure_ascii=False))


def _schema_for(name: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    for tool in tools or []:
        function = tool.get("function", tool)
        if function.get("name") == name:
            return (function.get("parameters") or {}).get("properties") or {}
    return {}


def _typed(raw: str, schema: dict[str, Any]) -> Any:
    value = raw.strip("\n")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    try:
        if kind == "string":
            return value
        if kind == "integer":
            return int(value.strip())
        if kind == "number":
            number = float(value.strip())
            return int(number) if number.is_integer() and "." not in value else number
        if kind == "boolean":
            return value.strip().lower() in ("true", "1", "yes")
        if kind in ("object", "array"):
            return json.loads(value)
    except ValueError:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def prompt_in_reasoning(prompt_text: str, think: tuple[str, str] | None) -> bool:
    """True when the prompt ends inside an open think block (the template opened it)."""
    if think is None:
        return False
    opened = prompt_text.rfind(think[0])
    return opened != -1 and prompt_text.rfind(think[1]) < opened


def detect_think_markers(vocabulary: set[str] | None) -> tuple[str, str] | None:
    """The first pair of think markers that the model's vocabulary has as single tokens."""
    for pair in THINK_MARKERS:
        if vocabulary is None or (pair[0] in vocabulary and pair[1] in vocabulary):
            return pair
    return None
