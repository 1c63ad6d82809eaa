"""Eviction strategies: which resident models to unload to make room on a node.

A strategy is a pure function ``choose(models, needed_mb, incoming) -> list[str] | None``
over a device's resident models and the model coming in (`Incoming`): its whole
policy, including which residents the incoming model may displace at all. The
built-in ones (`lru`, `priority`) are plugins registered through helexa's own
entry points, exactly as a third party's would be.

Rules every strategy keeps (enforced by `make_room`, which both built-ins use):
a pinned model and a model with requests in flight are never chosen; the answer
frees at least ``needed_mb`` or is ``None``; it never holds a model that is not
needed to reach ``needed_mb``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import msgspec


class Resident(msgspec.Struct, frozen=True, kw_only=True):
    """A model resident on a node, as eviction strategies see it."""

    model_id: str
    size_mb: int
    last_used: float | None = None
    """Unix time of the last request, or None if it never served one."""
    pinned: bool = False
    priority: int = 0
    """Residency priority from the catalogue: higher stays longer."""
    in_flight: int = 0
    parks: bool = False
    """Evicting it parks it on its neuron (weights kept in host memory, woken by a copy later)
    rather than dropping it: a cheaper eviction to come back from."""


class Incoming(msgspec.Struct, frozen=True, kw_only=True):
    """The model that needs the room, as eviction strategies see it."""

    model_id: str
    size_mb: int
    """What it needs on this device."""
    priority: int = 0
    """Its residency priority from the catalogue."""


Strategy = Callable[[Sequence[Resident], int, Incoming], list[str] | None]
"""``choose(models, needed_mb, incoming)``; see the hookspec `register_eviction_strategies`."""


def evictable(models: Iterable[Resident]) -> list[Resident]:
    """The models a strategy may choose from."""
    return [m for m in models if not m.pinned and m.in_flight == 0]


def make_room(ordered: Sequence[Resident], needed_mb: int) -> list[str] | None:
    """Take models in the given order until ``needed_mb`` is freed, then give back
    every chosen model that turned out not to be needed.

    ``ordered`` lists evictable models, most evictable first. Returns ``[]`` when
    nothing needs freeing and ``None`` when even all of them would not be enough.
    """
    if needed_mb <= 0:
        return []
    chosen: list[Resident] = []
    freed = 0
    for model in ordered:
        if freed >= needed_mb:
            break
        chosen.append(model)
        freed += model.size_mb
    if freed < needed_mb:
        return None
    # The last model chosen was needed to cross the line. Earlier ones may not be:
    # give back the most recently useful first (walk backwards), keeping the set minimal.
    for model in reversed(chosen[:-1]):
        if freed - model.size_mb >= needed_mb:
            chosen.remove(model)
            freed -= model.size_mb
    return [m.model_id for m in chosen]


def lru_key(model: Resident) -> tuple[int, float, bool, int]:
    """Never-used models first, then least recently used; on ties one that parks (cheap to bring
    back), then larger first (fewer evictions)."""
    if model.last_used is None:
        return (0, 0.0, not model.parks, -model.size_mb)
    return (1, model.last_used, not model.parks, -model.size_mb)
