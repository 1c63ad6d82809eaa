"""The built-in eviction strategies, as pure functions over a node's resident models."""

from __future__ import annotations

import pytest

from helexa.eviction import Incoming, Resident, evictable, make_room
from helexa.eviction.lru import choose as lru
from helexa.eviction.priority import choose as priority
from helexa.gateway.placement import Device, NodeView, rank
from helexa.settings import CatalogueModel


def m(model_id, size=1000, used=None, **kw):
    return Resident(model_id=model_id, size_mb=size, last_used=used, **kw)


@pytest.mark.parametrize("choose", [lru, priority])
def test_nothing_needed_evicts_nothing(choose):
    assert choose([m("a", used=1)], 0) == []


def test_lru_never_used_first_then_oldest():
    models = [m("recent", used=300), m("old", used=100), m("never"), m("middle", used=200)]
    assert lru(models, 1000) == ["never"]
    assert lru(models, 2000) == ["never", "old"]
    assert lru(models, 3000) == ["never", "old", "middle"]


@pytest.mark.parametrize("choose", [lru, priority])
def test_pinned_and_in_flight_are_never_chosen(choose):
    models = [m("pinned", pinned=True), m("busy", used=1, in_flight=2), m("free", used=50)]
    assert choose(models, 1000) == ["free"]
    assert choose(models, 1500) is None


@pytest.mark.parametrize("choose", [lru, priority])
def test_impossible_returns_none(choose):
    assert choose([m("a", size=500), m("b", size=400)], 1000) is None
    assert choose([], 1) is None


def test_never_returns_more_than_needed():
    # Walking in LRU order takes small "a", then big "b" crosses the line; "a" alone was not needed.
    models = [m("a", size=1000, used=1), m("b", size=8000, used=2), m("c", size=8000, used=3)]
    assert lru(models, 5000) == ["b"]


def test_prefers_fewer_models_on_ties():
    models = [m("small"), m("big", size=4000)]
    assert lru(models, 1000) == ["big"]


def test_priority_lowest_first_ties_by_lru():
    models = [
        m("keep", priority=10, used=1),
        m("low-recent", priority=0, used=500),
        m("low-old", priority=0, used=100),
        m("mid", priority=5, used=2),
    ]
    assert priority(models, 1000) == ["low-old"]
    assert priority(models, 2000) == ["low-old", "low-recent"]
    assert priority(models, 3000) == ["low-old", "low-recent", "mid"]
    assert priority(models, 4000) == ["low-old", "low-recent", "mid", "keep"]


def test_priority_and_lru_disagree_where_they_should():
    models = [m("important-but-idle", priority=9, used=1), m("busy-lately", priority=1, used=900)]
    assert lru(models, 1000) == ["important-but-idle"]
    assert priority(models, 1000) == ["busy-lately"]


def test_priority_keeps_what_is_more_important_than_the_incoming_model():
    models = [m("vital", used=1, priority=10), m("minor", used=2, priority=1)]
    assert priority(models, 1000, Incoming(model_id="new", size_mb=1000, priority=5)) == ["minor"]
    assert priority(models, 2000, Incoming(model_id="new", size_mb=2000, priority=5)) is None
    assert priority(models, 2000, Incoming(model_id="new", size_mb=2000, priority=10)) == ["minor", "vital"]


def test_placement_asks_the_strategy_with_the_incoming_model():
    """Placement has no policy of its own: what a strategy refuses stays, whatever the strategy is called."""
    seen = []

    def only_smaller(models, needed_mb, incoming):
        seen.append(incoming)
        return make_room([r for r in evictable(models) if r.size_mb < incoming.size_mb], needed_mb)

    full = Device(0, 1000, 0, (m("big", size=800, used=1), m("small", size=200, used=1)))
    entry = CatalogueModel(id="new", priority=3, vram_mb=300)
    choice = rank(entry, 300, [NodeView("n", (full,))], only_smaller, 0, {})
    assert seen == [Incoming(model_id="new", size_mb=300, priority=3)]
    assert choice.ranked == [] and "kept by the eviction strategy" in choice.busy["n"]
    choice = rank(CatalogueModel(id="huge"), 900, [NodeView("n", (full,))], only_smaller, 0, {})
    assert [room.evict for room in choice.ranked] == [("big", "small")]
