"""Block bookkeeping for hybrid models: KV blocks, plus a state slot per running sequence and
prefix snapshots of the recurrent states.

A cached KV prefix alone cannot resume a hybrid model: its linear-attention layers need their
states as they were at the end of that prefix. So while a prompt is prefilled, the states at
its last full block boundary (and, if configured, every ``interval`` tokens) are snapshotted,
keyed by the chain hash of the prefix's last block. A later prompt reuses the longest cached
prefix that ends at a snapshot: its blocks as usual, its states copied into the new sequence's
slot. A snapshot goes when the block it ends at is reused for other tokens, or when newer
snapshots need its room (least recently used first).

A sequence is admitted only when a state slot is free; otherwise it waits in the queue like
one that does not fit in the KV cache. Finish, abort and preemption return the slot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget

if TYPE_CHECKING:
    from helexa_torch.engine.state_cache import StateCache


class HybridBlockManager(BlockManager):
    def __init__(self, num_blocks: int, block_size: int, budget: StateBudget) -> None:
        super().__init__(num_blocks, block_size)
        if budget.slots < 1:
            raise ValueError("a hybrid model needs at least one state slot")
        if budget.interval % block_size:
            raise ValueError(f"state snapshot interval {budget.interval} is not a multiple of {block_size}")
        self.budget = budget
        self.free_slots = list(range(budget.slots - 1, -1, -1))
        self.slot_of: dict[Sequence, int] = {}
        self.free_snapshots = list(range(budget.slots + budget.snapshots - 1, budget.slots - 1, -1))
        self.snapshots: OrderedDict[int, int] = OrderedDict()
        """Chain hash of a prefix's last block -> the slot holding the states after that prefix."""
        self.states: StateCache | None = None
        """The tensors, attached by the model runner once the model is built."""

    @property
    def free_state_slots(self) -> int:
        return len(self.free_slots)

    def _lookup(self, seq: Sequence) -> list[int]:
        hits, previous, usable = super()._lookup(seq), 0, 0
        for i, block in enumerate(hits):
            previous = self.chain(previous, self.tokens_of[block])  # type: ignore[arg-type]
            if previous in self.snapshots:
                usable = i + 1
        return hits[:usable]

    def can_allocate(self, seq: Sequence, reserve: int = 0) -> bool:
        return bool(self.free_slots) and super().can_allocate(seq, reserve)

    def allocate(self, seq: Sequence) -> None:
        super().allocate(seq)
        slot = self.free_slots.pop()
        self.slot_of[seq] = slot
        if self.states is None:
            return
        if seq.block_hashes:  # a prefix hit: resume from the states at its end
            snapshot = self.snapshots[seq.block_hashes[-1]]
            self.snapshots.move_to_end(seq.block_hashes[-1])
            self.states.copy(snapshot, slot)
        else:
            self.states.zero(slot)

    def release(self, seq: Sequence) -> None:
        slot = self.slot_of.pop(seq, None)
        if slot is not None:
            self.free_slots.append(slot)
        super().release(seq)

    def _take(self) -> int:
        block = next(iter(self.free))
        old = self.hash_of[block]
        if old is not None and self.by_hash.get(old) == block and old in self.snapshots:
            self.free_snapshots.append(self.snapshots.pop(old))  # its prefix can no longer be found
        return super()._take()

    def snapshot_points(self, seq: Sequence, start: int, chunk: int) -> list[int]:
        """Positions in ``(start, start + chunk]`` after which this prompt's states are worth keeping."""
        if not self.budget.snapshots:
            return []
        size, interval = self.block_size, self.budget.interval
        last = (seq.prompt_len - 1) // size * size
        points = set(range(interval, min(start + chunk, last) + 1, interval)) if interval else set()
        points.add(last)
        return sorted(p for p in points if start < p <= start + chunk and p > 0)

    def prefix_hash(self, seq: Sequence, blocks: int) -> int:
        if len(seq.block_hashes) >= blocks:
            return seq.block_hashes[blocks - 1]
        previous = seq.block_hashes[-1] if seq.block_hashes else 0
        size = self.block_size
        for i in range(len(seq.block_hashes), blocks):
            previous = self.chain(previous, seq.block_tokens(i * size, (i + 1) * size))
        return previous

    def keep_snapshot(self, seq: Sequence, position: int) -> int | None:
        """A slot for the states after ``position`` tokens of ``seq``; None if already kept or no room."""
        key = self.prefix_hash(seq, position // self.block_size)
        if key in self.snapshots:
            self.snapshots.move_to_end(key)
            return None
        if self.free_snapshots:
            slot = self.free_snapshots.pop()
        elif self.snapshots:
            _, slot = self.snapshots.popitem(last=False)
        else:
            return None
        self.snapshots[key] = slot
        return slot
