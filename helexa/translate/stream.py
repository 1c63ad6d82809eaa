"""OpenAI chat completion chunks -> Anthropic's streaming events, as a state machine.

Feed it each upstream chunk (parsed JSON) and it returns the Anthropic events that
chunk produces, as ``(event name, data)`` pairs: ``message_start`` once, then for
each block ``content_block_start`` / ``content_block_delta``... / ``content_block_stop``,
then ``message_delta`` and ``message_stop``. One block is open at a time; a new kind
of output closes the open block first. Tool arguments go out as ``input_json_delta``
fragments in the same step that opens the tool block (the first fragment is never
lost). ``finish`` closes whatever is open and is safe to call more than once.
"""

from __future__ import annotations

import secrets
from typing import Any

from helexa.translate.response import message_id, signature, stop_reason, usage

Event = tuple[str, dict[str, Any]]


class StreamTranslator:
    def __init__(self, model: str, stop_sequences: list[str] | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.stop_sequences = stop_sequences
        self.input_tokens = input_tokens
        self.id = message_id()
        self.started = False
        self.finished = False
        self.open: str | None = None  # text | thinking | tool_use
        self.index = -1
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self.finish_reason: str | None = None
        self.matched_stop: str | None = None
        self.usage: dict[str, Any] | None = None
        self.output_pieces = 0
        self.thinking: list[str] = []

    def start(self) -> list[Event]:
        if self.started:
            return []
        self.started = True
        counts = usage(self.usage)
        counts["input_tokens"] = counts["input_tokens"] or self.input_tokens
        counts["output_tokens"] = 0
        return [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": self.model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": counts,
                    },
                },
            )
        ]

    def _close(self) -> list[Event]:
        if self.open is None:
            return []
        events: list[Event] = []
        if self.open == "thinking":  # as Anthropic streams it: the signature last, before the stop
            events.append(
                self._delta({"type": "signature_delta", "signature": signature("".join(self.thinking))})
            )
            self.thinking = []
        self.open = None
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self.index += 1
        self.open = kind
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return events

    def _delta(self, delta: dict[str, Any]) -> Event:
        return ("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events = self.start()
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                if self.open != "thinking":
                    events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
                self.thinking.append(reasoning)
                self.output_pieces += 1
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": text}))
                self.output_pieces += 1
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.matched_stop = (
                    choice.get("stop_reason") if isinstance(choice.get("stop_reason"), str) else None
                )
                events += self._close()
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        position = call.get("index", len(self.tool_blocks))
        function = call.get("function") or {}
        if position not in self.tool_blocks or call.get("id"):
            events += self._open(
                "tool_use",
                {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_" + secrets.token_hex(8),
                    "name": function.get("name", ""),
                    "input": {},
                },
            )
            self.tool_blocks[position] = self.index
        arguments = function.get("arguments")
        if arguments and self.open == "tool_use" and self.tool_blocks[position] == self.index:
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            self.output_pieces += 1
        return events

    def finish(self) -> list[Event]:
        """Close the message: the open block, then message_delta and message_stop (once)."""
        if self.finished:
            return []
        events = self.start() + self._close()
        self.finished = True
        reason, sequence = stop_reason(self.finish_reason, self.matched_stop, self.stop_sequences)
        counts = usage(self.usage)
        output = {"output_tokens": counts["output_tokens"] or self.output_pieces}
        if self.usage:
            output.update(
                input_tokens=counts["input_tokens"], cache_read_input_tokens=counts["cache_read_input_tokens"]
            )
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": output,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def error(self, kind: str, message: str) -> list[Event]:
        """An in-stream error ends the message: no message_stop follows."""
        self.finished = True
        return [("error", {"type": "error", "error": {"type": kind, "message": message}})]
