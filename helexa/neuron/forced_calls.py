"""Grammars that force a tool call in a model's own tool-call format (``tool_choice`` required or named).

One small function per format, keyed by the format's name in `FORCED_CALL_GRAMMARS`,
so a new format plugs in with one entry. Each returns a Lark grammar in llguidance's
dialect: literal markers around ``%json {schema}`` bodies, where the schema pins the
function's name and its parameters. ``max_calls`` is 1 when parallel calls are off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from helexa.neuron.structured import JSON_STYLE

GrammarBuilder = Callable[[list[dict[str, Any]], int | None], str]


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    return _function(tool).get("parameters") or {"type": "object"}


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


def _literal(text: str) -> str:
    return json.dumps(text)


def _repeat(rule: str, separator: str, max_calls: int | None) -> str:
    return rule if max_calls == 1 else f"{rule} ({_literal(separator)} {rule})*"


def call_object(tools: list[dict[str, Any]], arguments_key: str = "arguments") -> dict[str, Any]:
    """A schema for ``{"name": ..., "arguments": ...}`` naming one of ``tools``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": _function(t)["name"]}, arguments_key: _parameters(t)},
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def hermes(tools: list[dict[str, Any]], max_calls: int | None) -> str:
    """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Hermes, Qwen2.5, Qwen3)."""
    call = f'"<tool_call>\\n" {_json(call_object(tools))} "\\n</tool_call>"'
    return f"start: {_repeat('call', chr(10), max_calls)}\ncall: {call}\n"


def qwen_xml(tools: list[dict[str, Any]], max_calls: int | None) -> str:
    """``<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>``.

    String values are free text without ``<`` (so the closing tag is never ambiguous);
    every other type is JSON of its schema. Required parameters come first, in order.
    """
    rules, names = [], []
    for i, tool in enumerate(tools):
        function = _function(tool)
        parameters = _parameters(tool)
        properties = parameters.get("properties") or {}
        required = [k for k in parameters.get("required", []) if k in properties]
        items = []
        for key in [*required, *(k for k in properties if k not in required)]:
            schema = properties[key]
            value = "TEXT" if schema.get("type") == "string" and "enum" not in schema else _json(schema)
            item = f'"<parameter={key}>\\n" {value} "\\n</parameter>\\n"'
            items.append(f"({item})" if key in required else f"({item})?")
        body = " ".join(items) or '""'
        rules.append(f'fn{i}: "<function={function["name"]}>\\n" {body} "</function>"')
        names.append(f"fn{i}")
    call = f'"<tool_call>\\n" ({" | ".join(names)}) "\\n</tool_call>"'
    return (
        f"start: {_repeat('call', chr(10), max_calls)}\ncall: {call}\n"
        + "\n".join(rules)
        + "\nTEXT: /[^<]*/\n"
    )


def llama3(tools: list[dict[str, Any]], max_calls: int | None) -> str:
    """Llama 3.x JSON calls: ``{"name": ..., "parameters": {...}}``, one per line."""
    return f"start: {_repeat('call', '; ', max_calls)}\ncall: {_json(call_object(tools, 'parameters'))}\n"


def mistral(tools: list[dict[str, Any]], max_calls: int | None) -> str:
    """Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``."""
    calls: dict[str, Any] = {"type": "array", "items": call_object(tools), "minItems": 1}
    if max_calls is not None:
        calls["maxItems"] = max_calls
    return f'start: "[TOOL_CALLS]" {_json(calls)}\n'


FORCED_CALL_GRAMMARS: dict[str, GrammarBuilder] = {
    "hermes": hermes,
    "qwen_xml": qwen_xml,
    "llama3": llama3,
    "mistral": mistral,
}


def grammar_format(tool_format: str | None, chat_template: str | None) -> str:
    """The forced-call grammar for a model's tool format (`helexa.neuron.toolformats`): Qwen3-Coder's
    templates ask for an XML body inside the Hermes tags, so their calls are forced in that form."""
    if tool_format in (None, "hermes") and "<function=" in (chat_template or ""):
        return "qwen_xml"
    return tool_format or "hermes"


def forced_call_grammar(tool_format: str, tools: list[dict[str, Any]], max_calls: int | None) -> str:
    """The grammar of one (or, with ``max_calls`` None, several) calls of ``tools`` in ``tool_format``."""
    builder = FORCED_CALL_GRAMMARS.get(tool_format)
    if builder is None:
        known = ", ".join(FORCED_CALL_GRAMMARS)
        raise KeyError(f"no forced-call grammar for tool format {tool_format!r} (known: {known})")
    return builder(tools, max_calls)
