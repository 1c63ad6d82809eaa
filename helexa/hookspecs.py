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
    """Offer model architectures to the torch harness (`helexa_torch`).

    Call ``register(name, factory)`` where ``name`` is the Hugging Face
    ``architectures[0]`` value of the configs it serves (``"LlamaForCausalLM"``);
    register the same factory under the config's ``model_type`` too (``"llama"``),
    which is how a GGUF file's config, listing no architecture, is matched.
    ``factory()`` takes no arguments and returns the model *class*, a subclass of
    ``helexa_torch.models.causal_lm.CausalLM``. The harness builds it on the meta
    device as ``cls(hf_config, device, max_positions)``, casts it with
    ``.to(dtype)``, materializes it with ``model.materialize(device)`` and streams
    checkpoint weights in with ``model.load_weights(pairs)`` (``(name, tensor)``
    pairs in checkpoint naming, safetensors or GGUF). The class follows the
    engine's forward contract: ``forward(input_ids, positions, ctx, caches)`` over the
    whole batch and ``compute_logits(hidden)`` for the last positions only. A name
    the harness has no entry for falls back to ``TransformersForCausalLM``, whose
    class also answers ``unsupported(hf_config)`` with a reason or None.
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

    Call ``register(name, factory)``; ``factory()`` takes no arguments and returns a
    callable ``choose(models, needed_mb, incoming) -> list[str] | None``, called once
    per device placement considers. ``models`` are the residents of that device that
    may move at all (`helexa.eviction.Resident`: size, last use, pin, catalogue
    priority, requests in flight; pinned, busy and too-recently-loaded models are
    already left out); ``incoming`` is the model that needs the room
    (`helexa.eviction.Incoming`: id, size on this device, catalogue priority), so a
    strategy can refuse to displace what matters more (the built-in ``priority``
    does). It returns the ids to unload to free at least ``needed_mb``, ``[]`` when
    ``needed_mb`` is not positive, or ``None`` when room cannot be made. It must
    never choose a pinned model or one with requests in flight
    (`helexa.eviction.make_room` keeps these rules for the built-ins).
    """
