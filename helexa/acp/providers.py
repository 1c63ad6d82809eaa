"""Streaming from a model endpoint: OpenAI chat completions or Anthropic messages, with native tools.

Both providers turn the endpoint's stream into the same events: text, thinking,
complete tool calls, and the finish reason. Tools go in the API's own ``tools``
field; the fleet parses the model's tool calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from helexa.acp.settings import AcpEndpoint
from helexa.translate.request import to_anthropic_messages


@dataclass
class Text:
    text: str


@dataclass
class Thought:
    text: str


@dataclass
class Call:
    id: str
    name: str
    arguments: str


@dataclass
class Finish:
    reason: str  # end_turn | max_tokens | tool_use


class EndpointError(Exception):
    """The endpoint could not be reached or refused the request; the message says which and why."""


def _sse_data(line: str) -> str | None:
    return line[5:].strip() if line.startswith("data:") else None


class Provider:
    def __init__(self, endpoint: AcpEndpoint, environ: Mapping[str, str]) -> None:
        self.endpoint = endpoint
        key = endpoint.key(environ)
        headers = {}
        if endpoint.wire_api == "anthropic-messages":
            headers["anthropic-version"] = "2023-06-01"
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        self.http = httpx.AsyncClient(
            base_url=endpoint.base_url, headers=headers, timeout=httpx.Timeout(10.0, read=600.0)
        )

    async def models(self) -> list[str]:
        path = "/v1/models" if self.endpoint.wire_api == "anthropic-messages" else "/models"
        try:
            response = await self.http.get(path)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise EndpointError(
                f"endpoint {self.endpoint.name!r} ({self.endpoint.base_url}): {exc}"
            ) from None
        return [m["id"] for m in response.json().get("data", [])]

    def stream(
        self, model: str, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[Text | Thought | Call | Finish]:
        if self.endpoint.wire_api == "anthropic-messages":
            return self._anthropic(model, system, messages, tools)
        return self._openai(model, system, messages, tools)

    async def _post_lines(self, path: str, body: dict[str, Any]) -> AsyncIterator[str]:
        try:
            async with self.http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    try:
                        error = json.loads(text).get("error", text)
                        text = error.get("message", text) if isinstance(error, dict) else str(error)
                    except ValueError:
                        pass
                    raise EndpointError(
                        f"endpoint {self.endpoint.name!r} answered {response.status_code}: {text[:500]}"
                    )
                async for line in response.aiter_lines():
                    yield line
        except httpx.HTTPError as exc:
            raise EndpointError(
                f"endpoint {self.endpoint.name!r} ({self.endpoint.base_url}) is unreachable: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    async def _openai(self, model, system, messages, tools) -> AsyncIterator[Text | Thought | Call | Finish]:
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "max_tokens": self.endpoint.max_tokens,
            "messages": [{"role": "system", "content": system}, *messages],
        }
        if tools:
            body["tools"] = [{"type": "function", "function": t} for t in tools]
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        async for line in self._post_lines("/chat/completions", body):
            data = _sse_data(line)
            if not data or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                raise EndpointError(
                    error.get("message", str(error)) if isinstance(error, dict) else str(error)
                )
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    yield Thought(delta["reasoning_content"])
                if delta.get("content"):
                    yield Text(delta["content"])
                for part in delta.get("tool_calls") or []:
                    slot = calls.setdefault(
                        part.get("index", len(calls)), {"id": "", "name": "", "arguments": ""}
                    )
                    function = part.get("function") or {}
                    slot["id"] = part.get("id") or slot["id"]
                    slot["name"] = function.get("name") or slot["name"]
                    slot["arguments"] += function.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
        for index in sorted(calls):
            call = calls[index]
            yield Call(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")
        yield Finish("tool_use" if calls else "max_tokens" if finish == "length" else "end_turn")

    async def _anthropic(
        self, model, system, messages, tools
    ) -> AsyncIterator[Text | Thought | Call | Finish]:
        _, converted = to_anthropic_messages(messages)
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "max_tokens": self.endpoint.max_tokens,
            "system": system,
            "messages": converted,
        }
        if tools:
            body["tools"] = [
                {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
                for t in tools
            ]
        blocks: dict[int, dict[str, str]] = {}
        reason = "end_turn"
        event = ""
        async for line in self._post_lines("/v1/messages", body):
            if line.startswith("event:"):
                event = line[6:].strip()
                continue
            data = _sse_data(line)
            if not data:
                continue
            payload = json.loads(data)
            if event == "error":
                raise EndpointError(payload.get("error", {}).get("message", data))
            if event == "content_block_start" and payload["content_block"]["type"] == "tool_use":
                block = payload["content_block"]
                blocks[payload["index"]] = {"id": block["id"], "name": block["name"], "arguments": ""}
            elif event == "content_block_delta":
                delta = payload["delta"]
                if delta["type"] == "text_delta":
                    yield Text(delta["text"])
                elif delta["type"] == "thinking_delta":
                    yield Thought(delta["thinking"])
                elif delta["type"] == "input_json_delta" and payload["index"] in blocks:
                    blocks[payload["index"]]["arguments"] += delta["partial_json"]
            elif event == "message_delta":
                reason = payload["delta"].get("stop_reason") or reason
        for index in sorted(blocks):
            block = blocks[index]
            yield Call(block["id"], block["name"], block["arguments"] or "{}")
        yield Finish("tool_use" if blocks else "max_tokens" if reason == "max_tokens" else "end_turn")

    async def close(self) -> None:
        await self.http.aclose()
