"""The recurrent-state cache of hybrid models, beside the paged KV cache.

Each linear-attention layer owns two tensors with one row ("slot") per state: the causal
convolution's last inputs ``[slots, channels, kernel - 1]`` (model dtype) and the gated
delta rule's matrices ``[slots, v_heads, k_dim, v_dim]`` (float32: they accumulate over the
whole text). The first `StateBudget.slots` rows belong to running sequences, one each; the
rest hold prefix snapshots (the states at a prompt's block boundary, see `hybrid_blocks`).

A step never writes a running sequence's states in place. Layers read them, stage the new
ones on the step's `StateStep`, and the engine's commit writes them back, so a step that
fails can be retried (or bisected) from the same states, as it can with the KV cache.
Decoding sequences' recurrent states are staged in a buffer of one row per running slot,
allocated with the cache: the copy a step updates would otherwise be a fresh allocation of the
states' size in every layer of every step (on a CPU, megabytes of page faults per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from helexa_torch.engine.hybrid_blocks import HybridBlockManager
    from helexa_torch.engine.scheduler import Plan


@dataclass(frozen=True)
class StateBudget:
    slots: int
    """Sequences that can run at once (each holds one slot); more wait in the queue."""
    snapshots: int
    """Prefix snapshots kept for reuse (least recently used go first)."""
    interval: int = 0
    """Also snapshot every this many prompt tokens (a block-size multiple); 0: only the last boundary."""


StateOp = tuple
"""A write to the state slots, as plain data: ``("zero", slot)``, ``("copy", source, target)`` or
``("commit", [(segment, offset, slot), ...])`` (a step's staged states, and the snapshots kept)."""


class StateCache:
    def __init__(
        self,
        model,
        budget: StateBudget,
        dtype: torch.dtype,
        device: torch.device,
        blocks: HybridBlockManager | None,
    ) -> None:
        self.blocks = blocks
        """The engine's block manager; None on a tensor-parallel worker, which replays rank 0's writes."""
        self.device = device
        rows = budget.slots + budget.snapshots
        self.conv: list[torch.Tensor] = []
        self.recurrent: list[torch.Tensor] = []
        self.staging: list[torch.Tensor] = []
        """Per layer, the decoding sequences' new recurrent states until the step commits."""
        for layer in model.linear_layers:
            conv, recurrent = layer.state_shapes()
            self.conv.append(torch.zeros((rows, *conv), dtype=dtype, device=device))
            self.recurrent.append(torch.zeros((rows, *recurrent), dtype=torch.float32, device=device))
            self.staging.append(torch.empty((budget.slots, *recurrent), dtype=torch.float32, device=device))
        self.journal: list[StateOp] | None = None
        """Rank 0 of a tensor-parallel model: the slot writes since the last step, which the other
        ranks replay on their own heads' states before they run the next one (see `ranks`)."""
        if blocks is not None:
            blocks.states = self

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv[index], self.recurrent[index]

    def gather_recurrent(self, index: int, slots: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s recurrent states of ``slots``, copied into its staging buffer."""
        staged = self.staging[index][: len(slots)]
        return torch.index_select(self.recurrent[index], 0, slots, out=staged)

    def zero(self, slot: int) -> None:
        for conv, recurrent in zip(self.conv, self.recurrent, strict=True):
            conv[slot].zero_()
            recurrent[slot].zero_()
        if self.journal is not None:
            self.journal.append(("zero", slot))

    def copy(self, source: int, target: int) -> None:
        for conv, recurrent in zip(self.conv, self.recurrent, strict=True):
            conv[target].copy_(conv[source])
            recurrent[target].copy_(recurrent[source])
        if self.journal is not None:
            self.journal.append(("copy", source, target))

    def describe(self, plan: Plan) -> tuple[list[int], list[tuple[int, list[int]]]]:
        """The slot of each decoding sequence, and of each prompt chunk with the offsets to snapshot at."""
        slot_of = self.blocks.slot_of
        prefills = []
        for seq, chunk in plan.prefill:
            start = seq.num_computed
            offsets = [p - start for p in self.blocks.snapshot_points(seq, start, chunk)]
            prefills.append((slot_of[seq], offsets))
        return [slot_of[seq] for seq in plan.decode], prefills

    def step(self, decode: list[int], prefills: list[tuple[int, list[int]]]) -> StateStep:
        """What the layers of one forward need (from `describe`'s plain data)."""
        step = StateStep(self, self._tensor(decode))
        for slot, offsets in prefills:
            step.prefill_slots.append(slot)
            step.prefill_slot_tensors.append(self._tensor([slot]))
            step.snapshot_offsets.append(offsets)
        return step

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def commit(self, plan: Plan, step: StateStep) -> None:
        """Write the step's new states into their slots and keep the snapshots it took."""
        kept = []
        for segment, offset in step.captures:
            seq = plan.prefill[segment][0]
            slot = self.blocks.keep_snapshot(seq, seq.num_computed + offset)
            if slot is not None:
                kept.append((segment, offset, slot))
        self.write(step, kept)
        if self.journal is not None:
            self.journal.append(("commit", kept))

    @torch.no_grad()
    def write(self, step: StateStep, kept: list[tuple[int, int, int]]) -> None:
        """The tensor side of `commit`: staged states into their slots, captures into snapshot slots."""
        for index, slots, conv, recurrent in step.staged:
            self.conv[index].index_copy_(0, slots, conv.to(self.conv[index].dtype))
            self.recurrent[index].index_copy_(0, slots, recurrent.float())
        for segment, offset, slot in kept:
            for index, (conv, recurrent) in step.captures[(segment, offset)].items():
                self.conv[index][slot].copy_(conv)
                self.recurrent[index][slot].copy_(recurrent)

    def replay(self, ops: list[StateOp], pending: StateStep | None) -> None:
        """Do rank 0's slot writes (its journal) here; ``pending`` is the last step this rank ran."""
        for op in ops:
            if op[0] == "zero":
                self.zero(op[1])
            elif op[0] == "copy":
                self.copy(op[1], op[2])
            else:
                self.write(pending, op[1])


@dataclass
class StateStep:
    """One forward's view of the state cache (``StepContext.states``)."""

    cache: StateCache
    decode_slots: torch.Tensor
    """Slot of each decoding sequence, in batch order."""
    prefill_slots: list[int] = field(default_factory=list)
    prefill_slot_tensors: list[torch.Tensor] = field(default_factory=list)
    snapshot_offsets: list[list[int]] = field(default_factory=list)
    """Per prefill segment: offsets (from the segment's start) after which to snapshot the states."""
    staged: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    captures: dict[tuple[int, int], dict[int, tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict
    )

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.layer(index)

    def gather_recurrent(self, index: int, slots: torch.Tensor) -> torch.Tensor:
        return self.cache.gather_recurrent(index, slots)

    def stage(self, index: int, slots: torch.Tensor, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        self.staged.append((index, slots, conv, recurrent))

    def capture(
        self, index: int, segment: int, offset: int, conv: torch.Tensor, recurrent: torch.Tensor
    ) -> None:
        self.captures.setdefault((segment, offset), {})[index] = (conv, recurrent)


def plan_states(
    model, options: dict, dtype: torch.dtype, max_num_seqs: int, kv_bytes: int
) -> tuple[StateBudget, int]:
    """The state budget of a hybrid model and the bytes it takes out of the KV cache's budget.

    Options: ``state_slots`` (sequences running at once; default ``max_num_seqs``),
    ``state_snapshots`` (prefix snapshots kept; default as many as slots) and
    ``state_snapshot_interval`` (tokens; default 0, only each prompt's last block boundary).
    """
    from helexa.errors import ApiError
    from helexa_torch.models.hybrid import state_bytes_per_sequence

    per_state, recurrent = state_bytes_per_sequence(model, dtype)
    slots = int(options.get("state_slots") or max_num_seqs)
    snapshots = int(options.get("state_snapshots", slots))
    interval = int(options.get("state_snapshot_interval", 0))
    if slots < 1 or snapshots < 0 or interval < 0:
        raise ApiError(400, "state_slots must be >= 1, state_snapshots and interval >= 0", param="options")
    total = per_state * (slots + snapshots) + recurrent * slots  # and the decode staging buffer
    if total >= kv_bytes:
        raise ApiError(
            422,
            f"{slots} state slots and {snapshots} snapshots take {total // 2**20} MB "
            f"({per_state // 1024} KB each), the whole cache budget of {kv_bytes // 2**20} MB; "
            "lower state_slots / state_snapshots or raise kv_cache_mb",
            code="kv_cache_too_small",
        )
    return StateBudget(slots, snapshots, interval), total
