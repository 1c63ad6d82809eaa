"""The Responses API's output, built from parsed generation events.

`ResponseBuilder` turns the serving layer's events (reasoning, content, tool calls,
then a finish) into output items and the named stream events, in the order OpenAI
sends them: ``response.created``, ``response.in_progress``, then per item
``response.output_item.added`` / its part and deltas / ``response.output_item.done``,
then ``response.completed`` (``response.incomplete`` at the length limit,
``response.failed`` on an error). One item is open at a time. A non-streaming answer
is the same builder's final response object.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from helexa.errors import ApiError
from helexa.neuron.parsing import Event
from helexa.translate.responses import encode_reasoning
from helexa.wire.responses import ResponsesRequest

Stream = list[dict[str, Any]]


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseBuilder:
    def __init__(
        self,
        request: ResponsesRequest,
        custom_tools: set[str] | None = None,
        namespaces: dict[str, str] | None = None,
    ) -> None:
        self.request = request
        self.custom_tools = custom_tools or set()
        self.namespaces = namespaces or {}
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.text: list[str] = []
        reasoning = request.reasoning
        self.summarise = bool(reasoning and (reasoning.summary or reasoning.generate_summary))
        self.encrypt = "reasoning.encrypted_content" in (request.include or [])

    # --- the response object ---------------------------------------------------

    def response(self, status: str, usage: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        request = self.request
        reasoning = request.reasoning
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": request.model,
            "output": self.output,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": reasoning.effort if reasoning else None,
                "summary": reasoning.summary if reasoning else None,
            },
            "store": False,
            "temperature": request.temperature,
            "text": {"format": (request.text.format if request.text else None) or {"type": "text"}},
            "tool_choice": request.tool_choice or "auto",
            "tools": request.tools or [],
            "top_p": request.top_p,
            "truncation": "disabled",
            "usage": usage,
            "metadata": request.metadata or {},
            **extra,
        }

    def _event(self, kind: str, **data: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return event

    def start(self) -> Stream:
        return [
            self._event("response.created", response=self.response("in_progress")),
            self._event("response.in_progress", response=self.response("in_progress")),
        ]

    # --- items -------------------------------------------------------------------

    def _index(self) -> int:
        return len(self.output) - 1

    def _add(self, item: dict[str, Any]) -> Stream:
        events = self._close()
        self.output.append(item)
        self.open = item
        self.text = []
        return [*events, self._event("response.output_item.added", output_index=self._index(), item=item)]

    def _part_events(self, kind: str) -> tuple[str, str, str]:
        """(part added, delta, part done) event names for the open item's text."""
        if kind == "message":
            return "response.content_part", "response.output_text", "output_text"
        if self.summarise:
            return "response.reasoning_summary_part", "response.reasoning_summary_text", "summary_text"
        return "response.content_part", "response.reasoning_text", "reasoning_text"

    def _text(self, kind: str, text: str) -> Stream:
        events: Stream = []
        if self.open is None or self.open["type"] != kind:
            if kind == "message":
                item = {
                    "id": _id("msg"),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            else:
                item = {"id": _id("rs"), "type": "reasoning", "summary": []}
            events += self._add(item)
            part_event, _, part_type = self._part_events(kind)
            part = {"type": part_type, "text": ""}
            if part_type == "output_text":
                part["annotations"] = []
            where = {"item_id": self.open["id"], "output_index": self._index()}  # type: ignore[index]
            key = "summary_index" if part_event.startswith("response.reasoning_summary") else "content_index"
            events.append(self._event(f"{part_event}.added", **where, **{key: 0}, part=part))
        _, delta_event, _ = self._part_events(kind)
        key = "summary_index" if delta_event.startswith("response.reasoning_summary") else "content_index"
        self.text.append(text)
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(
            self._event(
                f"{delta_event}.delta",
                item_id=self.open["id"],  # type: ignore[index]
                output_index=self._index(),
                **{key: 0},
                delta=text,
                **extra,
            )
        )
        return events

    def _close(self) -> Stream:
        item, self.open = self.open, None
        if item is None or item["type"] not in ("message", "reasoning"):
            return []
        text = "".join(self.text)
        part_event, delta_event, part_type = self._part_events(item["type"])
        key = "summary_index" if part_event.startswith("response.reasoning_summary") else "content_index"
        where = {"item_id": item["id"], "output_index": self._index(), key: 0}
        part: dict[str, Any] = {"type": part_type, "text": text}
        if item["type"] == "message":
            part["annotations"] = []
            item["content"] = [part]
            item["status"] = "completed"
        else:
            if self.summarise:
                item["summary"] = [part]
            else:
                item["content"] = [part]
            if self.encrypt:
                item["encrypted_content"] = encode_reasoning(text)
        done: dict[str, Any] = {"text": text}
        if item["type"] == "message":
            done["logprobs"] = []
        return [
            self._event(f"{delta_event}.done", **where, **done),
            self._event(f"{part_event}.done", **where, part=part),
            self._event("response.output_item.done", output_index=self._index(), item=item),
        ]

    def _call(self, event: Event) -> Stream:
        call = event.call
        assert call is not None
        if call.name in self.custom_tools:
            import json

            try:
                value = json.loads(call.arguments).get("input", call.arguments)
            except (ValueError, AttributeError):
                value = call.arguments
            item = {
                "id": _id("ctc"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": call.id,
                "name": call.name,
                "input": "",
            }
            events = self._add(item)
            item["input"], item["status"] = str(value), "completed"
            self.open = None
            return [
                *events,
                self._event(
                    "response.custom_tool_call_input.delta",
                    item_id=item["id"],
                    output_index=self._index(),
                    delta=str(value),
                ),
                self._event(
                    "response.custom_tool_call_input.done",
                    item_id=item["id"],
                    output_index=self._index(),
                    input=str(value),
                ),
                self._event("response.output_item.done", output_index=self._index(), item=item),
            ]
        item = {
            "id": _id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call.id,
            "name": call.name,
        }
        if call.name in self.namespaces:
            item["namespace"] = self.namespaces[call.name]
        events = self._add(item)
        where = {"item_id": item["id"], "output_index": self._index()}
        item["arguments"], item["status"] = call.arguments, "completed"
        self.open = None
        return [
            *events,
            self._event("response.function_call_arguments.delta", **where, delta=call.arguments),
            self._event(
                "response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments
            ),
            self._event("response.output_item.done", output_index=self._index(), item=item),
        ]

    def feed(self, event: Event) -> Stream:
        if event.kind == "content":
            return self._text("message", event.text)
        if event.kind == "reasoning":
            return self._text("reasoning", event.text)
        return self._call(event)

    # --- the end -----------------------------------------------------------------

    def finish(self, reason: str, usage: dict[str, Any]) -> Stream:
        events = self._close()
        if reason == "length":
            final = self.response("incomplete", usage, incomplete_details={"reason": "max_output_tokens"})
            return [*events, self._event("response.incomplete", response=final)]
        return [*events, self._event("response.completed", response=self.response("completed", usage))]

    def failed(self, error: ApiError) -> Stream:
        self.open = None
        body = {"code": error.code or error.openai_type, "message": error.message}
        return [
            self._event("response.failed", response=self.response("failed", None, error=body)),
        ]


def usage(prompt_tokens: int, completion_tokens: int, cached: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + completion_tokens,
    }
