"""Structured outputs: a request's ``response_format``, ``structured_outputs`` or forced
``tool_choice`` as one `Constraint` that the harness enforces token by token.

Grammars are llguidance's (docs/api.md says why that engine): JSON schemas, regexes and
Lark grammars are all compiled to its grammar text here and checked without a tokenizer,
so a bad schema is a 400 that names the field before any token is generated. The
harness compiles the same text against the model's tokenizer.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from helexa.errors import ApiError
from helexa.neuron.harness import Constraint

JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
"""Compact, OpenAI-like JSON: without it a small model can wander into endless whitespace."""


def _checked(constraint: Constraint) -> Constraint:
    error = llguidance.LLMatcher.validate_grammar(constraint.grammar)
    if error:
        raise ApiError(
            400, f"{constraint.param} is not a valid constraint: {error.strip()}", param=constraint.param
        )
    return constraint


def json_constraint(schema: Any, param: str) -> Constraint:
    if isinstance(schema, bool) or not isinstance(schema, dict):
        raise ApiError(400, f"{param} must be a JSON schema object", param=param)
    styled = {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(styled))
    except Exception as exc:  # llguidance raises ValueError for schemas it cannot compile
        raise ApiError(400, f"{param} is not a usable JSON schema: {exc}", param=param) from None
    return _checked(Constraint(kind="json", grammar=grammar, param=param, schema=schema))


def response_format_constraint(response_format: dict[str, Any] | None) -> Constraint | None:
    """OpenAI ``response_format``: ``text`` (no constraint), ``json_object`` or ``json_schema``."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_constraint({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise ApiError(
                400,
                "response_format.json_schema.schema is required for type json_schema",
                param="response_format.json_schema",
            )
        return json_constraint(spec["schema"], "response_format.json_schema.schema")
    raise ApiError(
        400,
        f"response_format.type must be text, json_object or json_schema, got {kind!r}",
        param="response_format.type",
    )


def guided_constraint(guide: dict[str, Any] | None) -> Constraint | None:
    """vLLM's ``structured_outputs``: exactly one of ``json``, ``regex``, ``choice`` or ``grammar`` (Lark)."""
    if not guide:
        return None
    given = [k for k in ("json", "regex", "choice", "grammar") if guide.get(k) is not None]
    unknown = sorted(set(guide) - {"json", "regex", "choice", "grammar"})
    if unknown:
        raise ApiError(
            400, f"structured_outputs.{unknown[0]} is not supported", param=f"structured_outputs.{unknown[0]}"
        )
    if len(given) != 1:
        raise ApiError(
            400,
            "structured_outputs takes exactly one of json, regex, choice or grammar",
            param="structured_outputs",
        )
    key, value = given[0], guide[given[0]]
    param = f"structured_outputs.{key}"
    if key == "json":
        return json_constraint(json.loads(value) if isinstance(value, str) else value, param)
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ApiError(400, f"{param} must be a non-empty list of strings", param=param)
        grammar = "start: " + " | ".join(json.dumps(v) for v in value) + "\n"
        return _checked(Constraint(kind="grammar", grammar=grammar, param=param))
    if not isinstance(value, str):
        raise ApiError(400, f"{param} must be a string", param=param)
    if key == "regex":
        return _checked(
            Constraint(kind="regex", grammar=llguidance.LLMatcher.grammar_from_regex(value), param=param)
        )
    return _checked(
        Constraint(kind="grammar", grammar=llguidance.LLMatcher.grammar_from_lark(value), param=param)
    )


def forced_tools(tools: list[dict[str, Any]], choice: Any) -> list[dict[str, Any]] | None:
    """The tools a ``tool_choice`` forces a call of (None when the model may answer in text)."""
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        chosen = [t for t in tools if (t.get("function") or t).get("name") == name]
        if not chosen:
            offered = ", ".join((t.get("function") or t).get("name", "?") for t in tools)
            raise ApiError(
                400,
                f"tool_choice names function {name!r}, which is not in tools (tools: {offered})",
                param="tool_choice",
            )
        return chosen
    raise ApiError(
        400,
        f"tool_choice {choice!r} is not one of auto, required, none or a named function",
        param="tool_choice",
    )


def tool_call_constraint(tools: list[dict[str, Any]], tool_format: str, parallel: bool | None) -> Constraint:
    from helexa.neuron.forced_calls import forced_call_grammar

    max_calls = 1 if parallel is False else None
    grammar = llguidance.LLMatcher.grammar_from_lark(forced_call_grammar(tool_format, tools, max_calls))
    return _checked(
        Constraint(
            kind="tool_call",
            grammar=grammar,
            param="tool_choice",
            tools=tools,
            tool_format=tool_format,
            max_calls=max_calls,
        )
    )
