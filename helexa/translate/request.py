"""Anthropic Messages request -> OpenAI chat completions request (and the way back)."""

from __future__ import annotations

import json
import logging
from typing import Any

from helexa.errors import ApiError
from helexa.translate.system import fold_system
from helexa.wire.anthropic import AnthropicMessage, MessagesRequest

log = logging.getLogger("helexa.translate")
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}

TOOL_ERROR_PREFIX = "Error: "


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def system_text(system: str | list[dict[str, Any]] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text":
            raise _invalid(
                f"system[{i}]: blocks of type {block.get('type')!r} are not allowed in system; only text",
                f"system[{i}].type",
            )
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source.get('data', '')}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    raise _invalid(f"{where}.source.type must be base64 or url, got {kind!r}", f"{where}.source.type")


def _tool_result_content(block: dict[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """Text of a tool result, plus any images in it (sent after, as a user message)."""
    content = block.get("content", "")
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for j, inner in enumerate(content):
            kind = inner.get("type")
            if kind == "text":
                parts.append(str(inner.get("text", "")))
            elif kind == "image":
                images.append(_image(inner, f"{where}.content[{j}]"))
            else:
                raise _invalid(
                    f"{where}.content[{j}]: unsupported block type {kind!r} in a tool result",
                    f"{where}.content[{j}].type",
                )
        text = "\n".join(parts)
    else:
        text = json.dumps(content)
    if block.get("is_error"):
        text = TOOL_ERROR_PREFIX + text
    return text, images


def message(msg: AnthropicMessage, index: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results first, then the text/images/tool calls."""
    where = f"messages[{index}]"
    if msg.role == "system":  # Claude Code sends these; `fold_system` puts them where templates allow
        content = msg.content if isinstance(msg.content, str) else system_text(msg.content)
        return [{"role": "system", "content": content or ""}]
    if msg.role not in ("user", "assistant"):
        raise _invalid(f"{where}.role must be user, assistant or system, got {msg.role!r}", f"{where}.role")
    if isinstance(msg.content, str):
        return [{"role": msg.role, "content": msg.content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    late_images: list[dict[str, Any]] = []
    for j, block in enumerate(msg.content):
        kind = block.get("type")
        at = f"{where}.content[{j}]"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_use" and msg.role == "assistant":
            calls.append(
                {
                    "id": block.get("id") or f"toolu_{index}_{j}",
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": json.dumps(block.get("input", {})),
                    },
                }
            )
        elif kind == "tool_result" and msg.role == "user":
            text, images = _tool_result_content(block, at)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": text}
            )
            late_images.extend(images)
        elif kind == "thinking" and msg.role == "assistant":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "redacted_thinking" and msg.role == "assistant":
            continue  # encrypted for Anthropic's own models; nothing here can read it
        else:
            raise _invalid(
                f"{at}: unsupported content block type {kind!r} in a {msg.role} message", f"{at}.type"
            )
    out = list(tool_messages)
    if late_images:
        out.append({"role": "user", "content": late_images})
    if parts or calls or reasoning:
        item: dict[str, Any] = {"role": msg.role}
        if len(parts) == 1 and parts[0]["type"] == "text":
            item["content"] = parts[0]["text"]
        else:
            item["content"] = parts or None
        if calls:
            item["tool_calls"] = calls
        if reasoning:
            item["reasoning_content"] = "".join(reasoning)
        out.append(item)
    return out


def tools(specs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not specs:
        return None
    out = []
    for i, tool in enumerate(specs):
        if tool.get("type") not in (None, "custom") or "name" not in tool:
            raise _invalid(
                f"tools[{i}]: tool type {tool.get('type')!r} is not supported; give custom tools "
                "with name, description and input_schema",
                f"tools[{i}]",
            )
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    """OpenAI tool_choice and parallel_tool_calls for an Anthropic tool_choice."""
    if choice is None:
        return None, None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}, parallel
    raise _invalid(f"tool_choice.type must be auto, any, none or tool, got {kind!r}", "tool_choice.type")


def response_format(output_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI ``response_format`` for Anthropic's ``output_config.format`` (structured outputs)."""
    spec = (output_config or {}).get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        kind = spec.get("type") if isinstance(spec, dict) else spec
        raise _invalid(
            f"output_config.format.type must be json_schema, got {kind!r}", "output_config.format.type"
        )
    if not isinstance(spec.get("schema"), dict):
        raise _invalid(
            "output_config.format.schema must be a JSON schema object", "output_config.format.schema"
        )
    return {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": spec["schema"], "strict": True},
    }


def thinking_kwargs(thinking: dict[str, Any] | None) -> dict[str, Any] | None:
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind not in ("enabled", "disabled", "adaptive"):
        raise _invalid(f"thinking.type must be enabled, disabled or adaptive, got {kind!r}", "thinking.type")
    return {"enable_thinking": kind != "disabled"}


def thinking_budget(thinking: dict[str, Any] | None) -> int | None:
    """``budget_tokens`` of enabled thinking: the cap on the think block."""
    if not thinking or thinking.get("type") != "enabled" or thinking.get("budget_tokens") is None:
        return None
    budget = thinking["budget_tokens"]
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise _invalid(
            f"thinking.budget_tokens must be a non-negative integer, got {budget!r}", "thinking.budget_tokens"
        )
    return budget


def output_config(config: dict[str, Any] | None, body: dict[str, Any]) -> None:
    """``effort`` -> reasoning_effort; ``format`` -> response_format (structured output)."""
    if not config:
        return
    unknown = sorted(set(config) - {"effort", "format"})
    if unknown:
        raise _invalid(f"output_config.{unknown[0]} is not supported", f"output_config.{unknown[0]}")
    effort = config.get("effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise _invalid(
                f"output_config.effort must be one of {', '.join(EFFORTS)}, got {effort!r}",
                "output_config.effort",
            )
        body["reasoning_effort"] = EFFORTS[effort]
    fmt = config.get("format")
    if fmt is not None:
        if fmt.get("type") != "json_schema":
            raise _invalid(
                f"output_config.format.type must be json_schema, got {fmt.get('type')!r}",
                "output_config.format.type",
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt.get("schema") or {}, "strict": True},
        }


def apply_context_management(config: dict[str, Any] | None, messages: list[dict[str, Any]]) -> None:
    """Context edits, done here as Anthropic's servers do them before the model sees the prompt.

    ``clear_thinking_20251015`` drops the reasoning of all but the last ``keep`` assistant
    turns (``"all"``: none). ``clear_tool_uses_20250919`` needs token counts of each
    tool result before rendering; it is not applied, and the log says so.
    """
    for i, edit in enumerate((config or {}).get("edits") or []):
        kind = edit.get("type")
        if kind == "clear_thinking_20251015":
            keep = edit.get("keep", {"type": "thinking_turns", "value": 1})
            if keep == "all":
                continue
            count = keep.get("value", 1) if isinstance(keep, dict) else 1
            turns = [m for m in messages if m["role"] == "assistant" and m.get("reasoning_content")]
            for message in turns[: max(0, len(turns) - int(count))]:
                message.pop("reasoning_content", None)
        elif kind == "clear_tool_uses_20250919":
            log.info("context_management edit clear_tool_uses_20250919 is not applied: tool results are kept")
        else:
            raise _invalid(
                f"context_management.edits[{i}].type {kind!r} is not supported",
                f"context_management.edits[{i}].type",
            )


def chat_messages(system: str | list[dict[str, Any]] | None, messages: list[AnthropicMessage]) -> list[dict]:
    out: list[dict[str, Any]] = []
    text = system_text(system)
    if text:
        out.append({"role": "system", "content": text})
    for i, msg in enumerate(messages):
        out.extend(message(msg, i))
    return fold_system(out)


def to_openai(request: MessagesRequest, model: str) -> dict[str, Any]:
    """The chat completions body that asks a neuron for what the Messages request asks."""
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request.system, request.messages),
        "max_tokens": request.max_tokens,
    }
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    converted = tools(request.tools)
    if converted:
        body["tools"] = converted
        choice, parallel = tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
        if parallel is not None:
            body["parallel_tool_calls"] = parallel
    structured = response_format(request.output_config)
    if structured:
        body["response_format"] = structured
    kwargs = thinking_kwargs(request.thinking)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    budget = thinking_budget(request.thinking)
    if budget is not None:
        body["thinking_budget"] = budget
    output_config(request.output_config, body)
    apply_context_management(request.context_management, body["messages"])
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return body


def to_anthropic_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI chat messages back to (system, Anthropic messages): the inverse of `chat_messages`."""
    system = None
    out: list[dict[str, Any]] = []
    for item in messages:
        role = item["role"]
        if role == "system":
            system = item["content"]
            continue
        if role == "tool":
            text = item["content"]
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": item["tool_call_id"]}
            if text.startswith(TOOL_ERROR_PREFIX):
                block["is_error"], text = True, text[len(TOOL_ERROR_PREFIX) :]
            block["content"] = text
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        blocks: list[dict[str, Any]] = []
        if item.get("reasoning_content"):
            blocks.append({"type": "thinking", "thinking": item["reasoning_content"]})
        content = item.get("content")
        if isinstance(content, str) and content:
            blocks.append({"type": "text", "text": content})
        elif isinstance(content, list):
            for part in content:
                if part["type"] == "text":
                    blocks.append({"type": "text", "text": part["text"]})
                else:
                    url = part["image_url"]["url"]
                    if url.startswith("data:"):
                        media, _, data = url[5:].partition(";base64,")
                        blocks.append(
                            {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
                        )
                    else:
                        blocks.append({"type": "image", "source": {"type": "url", "url": url}})
        for call in item.get("tool_calls") or []:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": call["function"]["name"],
                    "input": json.loads(call["function"]["arguments"]),
                }
            )
        if out and out[-1]["role"] == role and role == "user" and isinstance(out[-1]["content"], list):
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out
