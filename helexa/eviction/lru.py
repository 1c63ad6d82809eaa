"""The `lru` eviction strategy: never-used models first, then least recently used."""

from __future__ import annotations

from collections.abc import Sequence

from helexa import hookimpl
from helexa.eviction import Resident, evictable, lru_key, make_room


def choose(models: Sequence[Resident], needed_mb: int) -> list[str] | None:
    return make_room(sorted(evictable(models), key=lru_key), needed_mb)


@hookimpl
def register_eviction_strategies(register):
    register("lru", lambda: choose)
