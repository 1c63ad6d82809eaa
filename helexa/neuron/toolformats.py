"""The tool-call formats models write, and which one a model uses.

Each family writes calls its own way; a `ToolFormat` says how to find them in the
output (the markers that open a call, the one that closes it, or a call that is the
whole answer) and how to read one. Built in:

- ``hermes``: ``<tool_call>{"name": …, "arguments": …}</tool_call>`` (Hermes, Qwen 2.5/3),
  and Qwen's XML body ``<function=name><parameter=p>…</parameter></function>`` in the same tags.
- ``llama3``: Llama 3.x, a JSON object ``{"name": …, "parameters": …}`` as the whole
  answer, or after ``<|python_tag|>`` (JSON, or a built-in tool's ``name.call(k=v)``).
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of calls, or ``name[ARGS]{…}`` per call.

The format is chosen per model from its chat template and special tokens (plugins
first, then the built-ins), unless the harness names one. Plugins add formats through
the ``register_tool_parsers`` hook: ``register(name, factory)`` with ``factory()``
returning a `ToolFormat`.
"""

from __future__ import annotations

import ast
import json
import logging
from typing import Any, Protocol, runtime_checkable

from helexa.neuron.parsing import ToolCallOut, new_call_id, parse_tool_call

log = logging.getLogger("helexa.neuron.toolformats")


@runtime_checkable
class ToolFormat(Protocol):
    name: str
    opens: tuple[str, ...]
    """Markers that start a call."""
    close: str | None
    """The marker that ends one call; None: the call runs to the end of the output."""
    whole_answer: bool
    """A call may also be the whole answer, with no marker (first non-space character ``{``)."""

    def parse(self, body: str, tools: list[dict[str, Any]] | None) -> list[ToolCallOut] | None:
        """The calls in a body (the text after an open marker, or the whole answer); None if it is not one."""
        ...

    def detect(self, template: str, special_tokens: set[str]) -> bool:
        """True when a model with this chat template and these special tokens writes this format."""
        ...


def _call(name: Any, arguments: Any) -> ToolCallOut | None:
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return ToolCallOut(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))


def _json_values(text: str) -> list[Any] | None:
    """Every JSON value in text, one after another (separated by space, ``;`` or ``,``)."""
    decoder = json.JSONDecoder()
    values, at = [], 0
    while True:
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
        if at >= len(text):
            return values
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return None
        values.append(value)


class Hermes:
    name = "hermes"
    opens = ("<tool_call>",)
    close = "</tool_call>"
    whole_answer = False

    def parse(self, body: str, tools: list[dict[str, Any]] | None) -> list[ToolCallOut] | None:
        call = parse_tool_call(body, tools)
        return [call] if call is not None else None

    def detect(self, template: str, special_tokens: set[str]) -> bool:
        return "<tool_call>" in template


class Llama3:
    name = "llama3"
    opens = ("<|python_tag|>",)
    close = None
    whole_answer = True

    def parse(self, body: str, tools: list[dict[str, Any]] | None) -> list[ToolCallOut] | None:
        text = body.strip()
        for end in ("<|eom_id|>", "<|eot_id|>"):
            text = text.removesuffix(end).strip()
        values = _json_values(text) if text.startswith("{") else None
        if values:
            calls = []
            for value in values:
                if not isinstance(value, dict):
                    return None
                if value.get("type") not in (None, "function"):
                    return None
                call = _call(value.get("name"), value.get("parameters", value.get("arguments", {})))
                if call is None:
                    return None
                calls.append(call)
            return calls
        return _python_calls(text)

    def detect(self, template: str, special_tokens: set[str]) -> bool:
        return "<|python_tag|>" in special_tokens or "<|python_tag|>" in template


def _python_calls(text: str) -> list[ToolCallOut] | None:
    """``brave_search.call(query="x")`` (Llama's built-in tools), one or more, as calls."""
    try:
        tree = ast.parse(text.strip(), mode="exec")
    except SyntaxError:
        return None
    calls = []
    for statement in tree.body:
        node = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(node, ast.Call) or node.args:
            return None
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "call" and isinstance(func.value, ast.Name):
            name = func.value.id
        elif isinstance(func, ast.Name):
            name = func.id
        else:
            return None
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            return None
        calls.append(ToolCallOut(new_call_id(), name, json.dumps(arguments, ensure_ascii=False)))
    return calls or None


class Mistral:
    name = "mistral"
    opens = ("[TOOL_CALLS]",)
    close = None
    whole_answer = False

    def parse(self, body: str, tools: list[dict[str, Any]] | None) -> list[ToolCallOut] | None:
        text = body.strip().removesuffix("</s>").strip()
        if text.startswith("["):  # v3: a JSON list of {"name", "arguments"}
            values = _json_values(text)
            if not values or not isinstance(values[0], list):
                return None
            calls = [
                _call(v.get("name"), v.get("arguments")) if isinstance(v, dict) else None for v in values[0]
            ]
            return None if not calls or None in calls else calls  # type: ignore[return-value]
        calls = []  # v11+: name[ARGS]{…}, each call after its own [TOOL_CALLS]
        for piece in text.split("[TOOL_CALLS]"):
            if not piece.strip():
                continue
            name, sep, arguments = piece.partition("[ARGS]")
            if not sep:
                return None
            name = name.split("[CALL_ID]")[0].strip()
            call = _call(name, arguments.strip())
            if call is None:
                return None
            calls.append(call)
        return calls or None

    def detect(self, template: str, special_tokens: set[str]) -> bool:
        return "[TOOL_CALLS]" in special_tokens or "[TOOL_CALLS]" in template


BUILTIN: dict[str, ToolFormat] = {f.name: f for f in (Mistral(), Llama3(), Hermes())}
"""In detection order: the most specific markers first."""
DEFAULT = BUILTIN["hermes"]


class ToolFormats:
    """The formats a neuron knows: the built-ins and those plugins register."""

    def __init__(self, plugins: Any = None) -> None:
        self.formats: dict[str, ToolFormat] = {}
        registry = plugins.registries.get("tool_parser") if plugins is not None else None
        for name in registry.names() if registry is not None else []:
            try:
                found = registry.get(name)()
            except Exception as exc:  # a broken plugin costs its format, not the neuron
                log.error("tool format %r could not be built and is not available: %s", name, exc)
                continue
            if not isinstance(found, ToolFormat):
                log.error(
                    "tool format %r does not have name, opens, close, whole_answer, parse, detect", name
                )
                continue
            self.formats[name] = found
        for name, builtin in BUILTIN.items():
            self.formats.setdefault(name, builtin)

    def get(self, name: str | None) -> ToolFormat:
        return self.formats.get(name or "", DEFAULT)

    def choose(self, named: str | None, template: str | None, special_tokens: list[str]) -> str:
        """The format a model uses: the one its harness names, else the first whose detect claims it."""
        if named:
            if named in self.formats:
                return named
            log.warning(
                "tool format %r is unknown (known: %s); detecting instead", named, ", ".join(self.formats)
            )
        specials = set(special_tokens)
        for name, fmt in self.formats.items():
            try:
                if fmt.detect(template or "", specials):
                    return name
            except Exception as exc:
                log.error("tool format %r failed to detect: %s", name, exc)
        return DEFAULT.name

    def markers(self) -> set[str]:
        """Every marker of every format: special tokens a harness must keep in the text it emits."""
        return {m for fmt in self.formats.values() for m in (*fmt.opens, fmt.close) if m}
