"""OpenAI Responses request -> the chat completions body the neuron's serving layer runs.

Pure functions. Every input item and tool is checked by its ``type``: what can be
served is translated, a hosted tool that cannot run here (``web_search`` and the
like) is left out of the prompt and named in `Translation.skipped` for the log,
and anything else is a 400 that names it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from helexa.errors import ApiError
from helexa.translate.system import fold_system
from helexa.wire.responses import ResponsesRequest

HOSTED_TOOLS = {
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "computer_use",
    "mcp",
    "local_shell",
    "tool_search",
}
"""Tools OpenAI runs on its own servers: nothing here can run them."""
HARMLESS_INCLUDES = {
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
}
REASONING_PREFIX = "hx1:"
"""Our ``encrypted_content``: the think block, encoded, so a stateless server gets it back next turn."""


@dataclass
class Translation:
    body: dict[str, Any]
    """The chat completions body."""
    custom_tools: set[str] = field(default_factory=set)
    """Names of freeform (``custom``) tools: their calls go back as ``custom_tool_call`` items."""
    namespaces: dict[str, str] = field(default_factory=dict)
    """Function name -> the namespace tool it came from (its calls name the namespace again)."""
    skipped: list[str] = field(default_factory=list)
    """Hosted tools left out of the prompt (logged by the caller)."""


def _invalid(message: str, param: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def encode_reasoning(text: str) -> str:
    return REASONING_PREFIX + base64.urlsafe_b64encode(text.encode()).decode()


def decode_reasoning(value: str | None) -> str | None:
    """The think block of one of our ``encrypted_content`` values; None for anyone else's."""
    if not value or not value.startswith(REASONING_PREFIX):
        return None
    try:
        return base64.urlsafe_b64decode(value[len(REASONING_PREFIX) :].encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def refuse_stateful(request: ResponsesRequest) -> None:
    """This server keeps no responses: what needs stored state is a 400 that says so."""
    if request.store:
        raise _invalid(
            "store: true is not supported: this server keeps no responses; send store: false "
            "and the whole conversation in input",
            "store",
            "store_unsupported",
        )
    if request.previous_response_id:
        raise _invalid(
            "previous_response_id is not supported: this server keeps no responses; "
            "send the whole conversation in input",
            "previous_response_id",
            "previous_response_unsupported",
        )
    for name in ("conversation", "background", "prompt"):
        if getattr(request, name):
            raise _invalid(
                f"{name} is not supported: this server keeps no state", name, "unsupported_parameter"
            )
    if request.truncation not in (None, "disabled"):
        raise _invalid("truncation must be disabled: input is never cut here", "truncation")
    if request.max_tool_calls is not None:
        raise _invalid("max_tool_calls is not supported", "max_tool_calls", "unsupported_parameter")
    if request.top_logprobs:
        raise _invalid(
            "top_logprobs is not supported on /v1/responses", "top_logprobs", "unsupported_parameter"
        )
    for i, name in enumerate(request.include or []):
        if name not in HARMLESS_INCLUDES:
            raise _invalid(f"include[{i}] {name!r} is not supported", f"include[{i}]")


def _text_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"{where} must be a string or a list of content parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not url:
                raise _invalid(f"{where}[{j}]: only image_url images are supported", f"{where}[{j}]")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise _invalid(f"{where}[{j}]: content part type {kind!r} is not supported", f"{where}[{j}].type")
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _assistant(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message to add a call or reasoning to: the last one, if nothing came after it."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    messages.append({"role": "assistant", "content": None})
    return messages[-1]


def input_messages(items: str | list[dict[str, Any]], custom: set[str]) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    pending_reasoning: list[str] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _invalid(f"{where}.role {role!r} is not user, system, developer or assistant", where)
            message: dict[str, Any] = {
                "role": "system" if role == "developer" else role,
                "content": _text_of(item.get("content", ""), f"{where}.content"),
            }
            if role == "assistant" and messages and messages[-1]["role"] == "assistant":
                last = messages[-1]  # reasoning or calls came first: one turn
                if last.get("content") in (None, ""):
                    last["content"] = message["content"]
                    message = last
                else:
                    messages.append(message)
            else:
                messages.append(message)
            if pending_reasoning and role == "assistant":
                message["reasoning_content"] = "\n".join(pending_reasoning)
                pending_reasoning = []
        elif kind == "reasoning":
            text = decode_reasoning(item.get("encrypted_content"))
            if text is None:
                pieces = item.get("content") or item.get("summary") or []
                text = "\n".join(str(p.get("text", "")) for p in pieces if isinstance(p, dict))
            if text:
                pending_reasoning.append(text)
        elif kind in ("function_call", "custom_tool_call"):
            target = _assistant(messages)
            if pending_reasoning:
                target["reasoning_content"] = "\n".join(pending_reasoning)
                pending_reasoning = []
            arguments = item.get("arguments", "{}")
            if kind == "custom_tool_call":
                custom.add(str(item.get("name")))
                arguments = json.dumps({"input": item.get("input", "")})
            target.setdefault("tool_calls", []).append(
                {
                    "id": item.get("call_id") or item.get("id") or f"call_{i}",
                    "type": "function",
                    "function": {"name": str(item.get("name", "")), "arguments": arguments},
                }
            )
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            if not isinstance(text, str):
                text = json.dumps(text)
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": text})
        elif kind == "item_reference":
            raise _invalid(
                f"{where}: item_reference needs stored responses, which this server does not keep",
                where,
                "previous_response_unsupported",
            )
        else:
            raise _invalid(f"{where}: input item type {kind!r} is not supported", f"{where}.type")
    return messages


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool["name"],
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def chat_tools(specs: list[dict[str, Any]] | None, translation: Translation) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(specs or []):
        kind = tool.get("type")
        if kind == "function":
            if not tool.get("name"):
                raise _invalid(f"tools[{i}]: a function tool needs a name", f"tools[{i}].name")
            out.append(_function(tool))
        elif kind == "namespace":  # a group of functions (MCP servers in Codex): offered flat
            for j, inner in enumerate(tool.get("tools") or []):
                if inner.get("type", "function") != "function" or not inner.get("name"):
                    raise _invalid(
                        f"tools[{i}].tools[{j}]: a namespace holds named functions", f"tools[{i}].tools[{j}]"
                    )
                out.append(_function(inner))
                translation.namespaces[inner["name"]] = str(tool.get("name", ""))
        elif kind == "custom":  # freeform text input: offered as a function of one string
            translation.custom_tools.add(tool["name"])
            description = tool.get("description") or ""
            out.append(
                _function(
                    {
                        "name": tool["name"],
                        "description": description,
                        "parameters": {
                            "type": "object",
                            "properties": {"input": {"type": "string"}},
                            "required": ["input"],
                        },
                    }
                )
            )
        elif kind in HOSTED_TOOLS:
            translation.skipped.append(str(kind))
        else:
            raise _invalid(f"tools[{i}]: tool type {kind!r} is not supported", f"tools[{i}].type")
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    if kind == "custom":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise _invalid(f"tool_choice of type {kind!r} is not supported here", "tool_choice")


def response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return dict(fmt)


def to_chat(request: ResponsesRequest) -> Translation:
    """The chat completions body for a Responses request (stateless parts checked first)."""
    refuse_stateful(request)
    translation = Translation(body={})
    messages = input_messages(request.input, translation.custom_tools)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    body: dict[str, Any] = {"model": request.model, "messages": fold_system(messages)}
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    tools = chat_tools(request.tools, translation)
    if tools:
        body["tools"] = tools
        choice = chat_tool_choice(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    fmt = response_format(request.text)
    if fmt is not None:
        body["response_format"] = fmt
    if request.reasoning is not None and request.reasoning.effort:
        body["reasoning_effort"] = request.reasoning.effort
    translation.body = body
    return translation
