"""Where a model can go and where it should go: pure decisions over plain data.

Feasibility says whether a neuron could ever hold a catalogue model (pinning,
device count, per-device memory floor, total memory). Ranking orders the feasible
healthy neurons: pinned first, then those where the model is parked (a wake is a
copy from host memory, not a load), then those where it fits in free memory, then
those where it fits after evicting what it may displace, then most free memory,
then name. `plan_room` asks the eviction strategy which models to unload on a device;
the strategy alone decides which residents the incoming model may displace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from helexa.eviction import Incoming, Resident, Strategy
from helexa.settings import CatalogueModel

DEFAULT_SIZE_MB = 1024
"""Assumed size of a model that has never been loaded and whose catalogue entry gives none."""


@dataclass(frozen=True)
class Device:
    index: int
    total_mb: int
    free_mb: int
    residents: tuple[Resident, ...] = ()


@dataclass(frozen=True)
class NodeView:
    name: str
    devices: tuple[Device, ...]
    parked: frozenset[str] = frozenset()
    """Models parked on this node: in host memory, holding no device memory."""

    @property
    def free_mb(self) -> int:
        return sum(d.free_mb for d in self.devices)


@dataclass(frozen=True)
class Room:
    """A way to fit a model on a node: which devices, and what to unload first."""

    node: str
    devices: tuple[int, ...]
    evict: tuple[str, ...] = ()


@dataclass
class Choice:
    ranked: list[Room]
    refusals: dict[str, str] = field(default_factory=dict)
    """Neuron name -> why the model can never go there."""
    busy: dict[str, str] = field(default_factory=dict)
    """Neuron name -> why the model cannot go there right now (room may come)."""


def infeasible_reason(entry: CatalogueModel, node: NodeView, size_mb: int) -> str | None:
    """Why ``entry`` can never go on ``node`` (None when it can)."""
    if entry.pinned_on and node.name not in entry.pinned_on:
        return f"pinned to {', '.join(entry.pinned_on)}"
    wanted = entry.min_devices
    if len(node.devices) < wanted:
        return f"needs {wanted} devices, has {len(node.devices)}"
    if entry.min_device_vram_mb is not None:
        big = [d for d in node.devices if d.total_mb >= entry.min_device_vram_mb]
        if len(big) < wanted:
            return f"needs {wanted} device(s) with at least {entry.min_device_vram_mb} MB, has {len(big)}"
    largest = sorted((d.total_mb for d in node.devices), reverse=True)[:wanted]
    if sum(largest) < size_mb:
        holder = "largest device holds" if wanted == 1 else "devices hold"
        return f"needs {size_mb} MB, its {holder} {sum(largest)} MB"
    return None


def movable(
    residents: Sequence[Resident], now: float, min_residency_s: float, loaded_at: dict[str, float]
) -> list[Resident]:
    """Residents that may be displaced at all: not pinned, idle, past their minimum residency."""
    return [
        r
        for r in residents
        if not r.pinned and not r.in_flight and now - loaded_at.get(r.model_id, 0.0) >= min_residency_s
    ]


def plan_room(
    device: Device, incoming: Incoming, strategy: Strategy, candidates: Sequence[Resident]
) -> tuple[str, ...] | None:
    """What to unload from ``device`` so ``incoming`` fits (``()`` if it already does; None if it cannot)."""
    short = incoming.size_mb - device.free_mb
    if short <= 0:
        return ()
    chosen = strategy(candidates, short, incoming)
    return None if chosen is None else tuple(chosen)


def rank(
    entry: CatalogueModel,
    size_mb: int,
    nodes: Sequence[NodeView],
    strategy: Strategy,
    min_residency_s: float,
    loaded_at: dict[str, float],
    now: float | None = None,
) -> Choice:
    """Every way to place ``entry``, best first, and why the other neurons cannot take it."""
    now = time.time() if now is None else now
    choice = Choice(ranked=[])
    keyed: list[tuple[tuple, Room]] = []
    incoming = Incoming(model_id=entry.id, size_mb=-(-size_mb // entry.min_devices), priority=entry.priority)
    for node in nodes:
        reason = infeasible_reason(entry, node, size_mb)
        if reason is not None:
            choice.refusals[node.name] = reason
            continue
        pinned = node.name in entry.pinned_on
        usable = [
            d
            for d in node.devices
            if entry.min_device_vram_mb is None or d.total_mb >= entry.min_device_vram_mb
        ]
        rooms = []
        for device in usable:
            candidates = movable(device.residents, now, min_residency_s, loaded_at)
            evict = plan_room(device, incoming, strategy, candidates)
            if evict is not None:
                rooms.append((len(evict) > 0, len(evict), -device.free_mb, device.index, evict))
        rooms.sort()
        if len(rooms) < entry.min_devices:
            choice.busy[node.name] = (
                f"no room for {size_mb} MB: what is resident is busy, pinned, loaded too recently to evict,"
                " or kept by the eviction strategy"
            )
            continue
        picked = rooms[: entry.min_devices]
        evicts = tuple(m for room in picked for m in room[4])
        fits_free = not evicts
        key = (not pinned, entry.id not in node.parked, not fits_free, -node.free_mb, node.name)
        keyed.append((key, Room(node.name, tuple(sorted(r[3] for r in picked)), evicts)))
    keyed.sort(key=lambda pair: pair[0])
    choice.ranked = [room for _, room in keyed]
    return choice


def explain(model_id: str, refusals: dict[str, str]) -> str:
    if not refusals:
        return f"model {model_id!r} cannot be placed: no neuron is healthy"
    reasons = "; ".join(f"{node}: {why}" for node, why in sorted(refusals.items()))
    return f"model {model_id!r} cannot be placed on any neuron ({reasons})"
