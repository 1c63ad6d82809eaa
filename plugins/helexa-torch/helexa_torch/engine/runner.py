"""One forward pass per step over the whole batch, with logits only where a token is sampled."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.media import StepMedia, step_media
from helexa_torch.engine.scheduler import Plan
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget, StateCache, StateStep
from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.context import KVCache, PrefillSegment, StepContext
from helexa_torch.models.delta_kernels import take_device_kernels
from helexa_torch.models.packed import can_pack

log = logging.getLogger("helexa.torch.engine")


@dataclass
class Step:
    """One step's inputs as plain data (what tensor-parallel ranks are sent to run the same forward)."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    """Cache slot of every token."""
    decode_tables: list[list[int]] = field(default_factory=list)
    """Block tables of the decoding sequences, padded to the widest."""
    decode_lens: list[int] = field(default_factory=list)
    prefills: list[tuple[int, int, int, list[int]]] = field(default_factory=list)
    """(first row, length, tokens already cached, block table) of each prompt chunk."""
    rows: list[int] = field(default_factory=list)
    """Rows whose logits are sampled."""
    state_decode: list[int] = field(default_factory=list)
    """Hybrid models: the state slot of each decoding sequence."""
    state_prefills: list[tuple[int, list[int]]] = field(default_factory=list)
    """Hybrid models: the state slot of each prompt chunk, and the offsets to snapshot its states at."""
    state_ops: list[tuple] = field(default_factory=list)
    """Hybrid models on several ranks: rank 0's state-slot writes since the last step (its journal)."""
    media: StepMedia | None = None
    """Vision models: the step's multimodal positions and image embeddings (the tower runs on rank 0)."""


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        blocks: BlockManager | None = None,
        states: StateBudget | None = None,
    ) -> None:
        if can_pack(device) and hasattr(model, "pack_linears"):
            packed = model.pack_linears()  # a woken model is packed already: 0
            if packed:
                log.info("%d linear layers laid out for oneDNN on the CPU", packed)
        self.model = model
        self.block_size = block_size
        self.device = device
        shape = (model.num_kv_heads, num_blocks, block_size, model.head_dim)
        self.caches = [
            KVCache(
                torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
            )
            for _ in range(model.num_layers)
        ]
        self.states: StateCache | None = None
        self.pending: StateStep | None = None
        if getattr(model, "linear_layers", None):  # a hybrid model: its recurrent states live beside the KV
            if hasattr(blocks, "slot_of"):
                self.states = StateCache(model, blocks.budget, dtype, device, blocks)
            elif states:  # a tensor-parallel worker: rank 0's block manager decides every slot
                self.states = StateCache(model, states, dtype, device, None)
            else:
                raise ValueError("a hybrid model needs the engine's state cache (a HybridBlockManager)")
            take_device_kernels(model, device, dtype)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        size, table = self.block_size, seq.block_table
        return [table[p // size] * size + p % size for p in range(start, end)]

    def describe(self, plan: Plan) -> tuple[Step, list[Sequence]]:
        """The step's inputs as plain data, and the sequences a token is sampled for (in row order).

        A vision model's images are run through its tower here, once per prompt (`step_media`)."""
        step = Step()
        ids, positions, slots = step.ids, step.positions, step.slots
        sampled: list[Sequence] = []
        for row, seq in enumerate(plan.decode):
            position = len(seq.token_ids) - 1
            ids.append(seq.token_ids[-1])
            positions.append(position)
            slots.extend(self._slots(seq, position, position + 1))
            step.rows.append(row)
            sampled.append(seq)
        if self.states is not None:
            step.state_decode, step.state_prefills = self.states.describe(plan)
        if plan.decode:
            widest = max(len(seq.block_table) for seq in plan.decode)
            step.decode_tables = [
                seq.block_table + [0] * (widest - len(seq.block_table)) for seq in plan.decode
            ]
            step.decode_lens = [len(seq.token_ids) for seq in plan.decode]
        for seq, chunk in plan.prefill:
            start, end = seq.num_computed, seq.num_computed + chunk
            step.prefills.append((len(ids), chunk, start, seq.block_table[: -(-end // self.block_size)]))
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self._slots(seq, start, end))
            if end == len(seq.token_ids):
                step.rows.append(len(ids) - 1)
                sampled.append(seq)
        step.media = step_media(self.model, plan, self.device)
        return step, sampled

    def build(self, step: Step) -> tuple[torch.Tensor, torch.Tensor, StepContext]:
        """The step's tensors on this runner's device: token ids, positions and the attention context."""
        ctx = StepContext(slot_mapping=self._tensor(step.slots), num_decode=len(step.decode_lens))
        if step.decode_lens:
            widest = len(step.decode_tables[0])
            lens = self._tensor(step.decode_lens)
            ctx.decode_blocks = self._tensor(step.decode_tables).view(len(step.decode_tables), widest)
            ctx.decode_lens = lens
            visible = torch.arange(widest * self.block_size, device=self.device)[None, :] < lens[:, None]
            mask = torch.zeros(visible.shape, dtype=torch.float32, device=self.device)
            ctx.decode_mask = mask.masked_fill_(~visible, float("-inf"))
        for first, length, cached, table in step.prefills:
            segment = PrefillSegment(
                start=first, length=length, cached=cached, block_table=self._tensor(table)
            )
            if cached:
                query = torch.arange(cached, cached + length, device=self.device)[:, None]
                segment.mask = torch.arange(cached + length, device=self.device)[None, :] <= query
            ctx.prefills.append(segment)
        if self.states is not None:
            ctx.states = self.pending = self.states.step(step.state_decode, step.state_prefills)
        if step.media is not None:
            ctx.media = step.media.to(self.device)
        return self._tensor(step.ids), self._tensor(step.positions), ctx

    def prepare(
        self, plan: Plan
    ) -> tuple[torch.Tensor, torch.Tensor, StepContext, list[int], list[Sequence]]:
        step, sampled = self.describe(plan)
        ids, positions, ctx = self.build(step)
        return ids, positions, ctx, step.rows, sampled

    @torch.inference_mode()
    def run(self, plan: Plan) -> tuple[torch.Tensor | None, list[Sequence]]:
        """Forward the step; returns logits [sampled sequences, vocab] and those sequences."""
        ids, positions, ctx, rows, sampled = self.prepare(plan)
        hidden = self.model(ids, positions, ctx, self.caches)
        if not rows:
            return None, []
        return self.model.compute_logits(hidden[self._tensor(rows)]), sampled

    def commit(self, plan: Plan) -> None:
        """Keep what the last forward (of ``plan``) computed beyond the KV cache: a hybrid's new states."""
        if self.pending is not None:
            self.states.commit(plan, self.pending)
            self.pending = None
