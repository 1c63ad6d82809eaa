"""The extension contract of helexa: one documented function per hook.

Every hook is a *collect* hook: helexa calls each plugin's implementation with a
`register(name, factory)` callback and files what it receives in a name-keyed
registry (see `helexa.plugins`). Configuration then picks entries by name, so the
order in which plugins load never matters.

Plugins implement hooks with `@helexa.hookimpl` and are found through the
entry-point group ``helexa``. An entry module must import nothing heavy at import
time: torch and transformers belong inside the factories.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "helexa"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Callable[..., Any]], None]


# --- neuron: serving models --------------------------------------------------


@hookspec
def register_harnesses(register: Register) -> None:
    """Offer harnesses: the engines that load models and generate tokens.

    Call ``register(name, factory)`` once per harness. ``name`` is what
    `neuron.toml` and load requests use (``"torch"``, ``"echo"``). ``factory`` is
    called as ``factory(context)`` with a `helexa.neuron.harness.HarnessContext`
    and returns an object that satisfies `helexa.neuron.harness.Harness`.
    """


@hookspec
def register_architectures(register: Register) -> None:
    """Offer model architectures to the torch harness.

    Call ``register(name, factory)`` where ``name`` is the Hugging Face
    ``architectures[0]`` value of the configs it serves (``"LlamaForCausalLM"``)
    and ``factory(hf_config, dtype, device)`` returns an ``nn.Module`` that follows
    the torch harness's forward contract and loads weights from ``(name, tensor)``
    pairs.
    """


@hookspec
def register_tool_parsers(register: Register) -> None:
    """Offer tool-call formats: how a model family writes tool calls in its output.

    Call ``register(name, factory)``; ``factory()`` returns an object that satisfies
    `helexa.neuron.toolformats.ToolFormat`: ``opens`` (markers that start a call),
    ``close`` (the marker that ends one, or None for "to the end of the output"),
    ``whole_answer`` (a call may be the whole answer, starting with ``{``),
    ``parse(body, tools)`` returning `helexa.neuron.parsing.ToolCallOut` values (or
    None when the body is not a call, so it is returned as text), and
    ``detect(chat_template, special_tokens)`` claiming the models that write it.
    Plugin formats are asked before the built-in ones; a harness may also name the
    format of a model (``LoadedModel.tool_format``).
    """


# --- gateway: fleet lifecycle ------------------------------------------------


@hookspec
def register_eviction_strategies(register: Register) -> None:
    """Offer eviction strategies, chosen by name in `gateway.toml` (``[eviction] strategy``).

    Call ``register(name, factory)``; ``factory()`` returns a callable
    ``choose(models, needed_mb) -> list[str] | None`` over a node's resident models
    (`helexa.eviction.Resident`): the ids to unload to free at least ``needed_mb``,
    or ``None`` when room cannot be made. It must never choose a pinned model or
    one with requests in flight.
    """
