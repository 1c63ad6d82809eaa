"""The `priority` eviction strategy: lowest residency priority first, ties by LRU."""

from __future__ import annotations

from collections.abc import Sequence

from helexa import hookimpl
from helexa.eviction import Resident, evictable, lru_key, make_room


def choose(models: Sequence[Resident], needed_mb: int) -> list[str] | None:
    return make_room(sorted(evictable(models), key=lambda m: (m.priority, *lru_key(m))), needed_mb)


@hookimpl
def register_eviction_strategies(register):
    register("priority", lambda: choose)
