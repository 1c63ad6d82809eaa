"""The `lru` eviction strategy: never-used models first, then least recently used."""

from __future__ import annotations

from collections.abc import Sequence

from helexa import hookimpl
from helexa.eviction import Incoming, Resident, evictable, lru_key, make_room


def choose(models: Sequence[Resident], needed_mb: int, incoming: Incoming | None = None) -> list[str] | None:
    """Who comes in does not matter to LRU: only how long ago each resident was used."""
    return make_room(sorted(evictable(models), key=lru_key), needed_mb)


@hookimpl
def register_eviction_strategies(register):
    register("lru", lambda: choose)
