"""The parking lot: which evicted models keep their weights in host memory, within a budget.

An evicted model whose harness can park it frees its device memory but keeps its
weights in RAM, so that loading it again is a copy rather than a read from disk.
Host memory is finite: ``neuron.park_mb`` bounds what parked models hold, and when
a new one needs room the oldest parked are dropped first. The lot only keeps the
books; the model manager does the parking, waking and dropping.
"""

from __future__ import annotations

from helexa.neuron.discovery import memory_total_mb
from helexa.settings import NeuronSettings
from helexa.wire.fleet import ModelSpec

MB = 1024 * 1024
DEFAULT_SHARE = 0.25
"""Share of RAM parked models may hold when ``neuron.park_mb`` is not set."""


def park_budget_bytes(settings: NeuronSettings) -> int:
    configured = settings.neuron.park_mb
    if configured is not None:
        return configured * MB
    return int(memory_total_mb() * DEFAULT_SHARE) * MB


class ParkingLot:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.parked: dict[str, int] = {}
        """Model id -> host bytes, oldest parked first (dicts keep insertion order)."""

    @property
    def used(self) -> int:
        return sum(self.parked.values())

    def fits(self, size: int) -> bool:
        """Whether a model of ``size`` bytes could be parked at all (dropping every other if need be)."""
        return self.budget > 0 and size <= self.budget

    def to_drop(self, size: int) -> list[str] | None:
        """Parked models to drop, oldest first, so that ``size`` more bytes fit; None if they never can."""
        if not self.fits(size):
            return None
        drop, used = [], self.used
        for model_id, held in self.parked.items():
            if used + size <= self.budget:
                break
            drop.append(model_id)
            used -= held
        return drop

    def add(self, model_id: str, size: int) -> None:
        self.parked.pop(model_id, None)
        self.parked[model_id] = size

    def remove(self, model_id: str) -> None:
        self.parked.pop(model_id, None)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.parked


def wakes_as(parked: ModelSpec, harness: str, wanted: ModelSpec) -> bool:
    """Whether a load of ``wanted`` may be served by waking the model parked from ``parked`` (on
    ``harness``): it asks for the same harness, quantization and options, or for nothing beyond the id."""
    return (
        wanted.harness in (None, harness)
        and wanted.quant in (None, parked.quant)
        and wanted.options in ({}, parked.options)
    )
