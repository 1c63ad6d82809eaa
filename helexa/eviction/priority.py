"""The `priority` eviction strategy: lowest residency priority first, ties by LRU.

A model never displaces one of higher priority than its own: a request for an
unimportant model waits for room (or is refused) rather than evicting an important one.
"""

from __future__ import annotations

from collections.abc import Sequence

from helexa import hookimpl
from helexa.eviction import Incoming, Resident, evictable, lru_key, make_room


def choose(models: Sequence[Resident], needed_mb: int, incoming: Incoming | None = None) -> list[str] | None:
    if incoming is not None:
        models = [m for m in models if m.priority <= incoming.priority]
    return make_room(sorted(evictable(models), key=lambda m: (m.priority, *lru_key(m))), needed_mb)


@hookimpl
def register_eviction_strategies(register):
    register("priority", lambda: choose)
