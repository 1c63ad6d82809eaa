"""One forward pass per step over the whole batch, with logits only where a token is sampled."""

from __future__ import annotations

import torch

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.media import step_media
from helexa_torch.engine.scheduler import Plan
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateCache, StateStep
from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.context import KVCache, PrefillSegment, StepContext


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        blocks: BlockManager | None = None,
    ) -> None:
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
            if not hasattr(blocks, "slot_of"):
                raise ValueError("a hybrid model needs the engine's state cache (a HybridBlockManager)")
            self.states = StateCache(model, blocks, dtype, device)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        size, table = self.block_size, seq.block_table
        return [table[p // size] * size + p % size for p in range(start, end)]

    def prepare(
        self, plan: Plan
    ) -> tuple[torch.Tensor, torch.Tensor, StepContext, list[int], list[Sequence]]:
        ids, positions, slots = [], [], []
        sampled_rows: list[int] = []
        sampled: list[Sequence] = []
        for row, seq in enumerate(plan.decode):
            position = len(seq.token_ids) - 1
            ids.append(seq.token_ids[-1])
            positions.append(position)
            slots.extend(self._slots(seq, position, position + 1))
            sampled_rows.append(row)
            sampled.append(seq)
        ctx = StepContext(slot_mapping=torch.empty(0), num_decode=len(plan.decode))
        if plan.decode:
            widest = max(len(seq.block_table) for seq in plan.decode)
            tables = [seq.block_table + [0] * (widest - len(seq.block_table)) for seq in plan.decode]
            lens = self._tensor([len(seq.token_ids) for seq in plan.decode])
            ctx.decode_blocks = self._tensor(tables).view(len(tables), widest)
            ctx.decode_lens = lens
            visible = torch.arange(widest * self.block_size, device=self.device)[None, :] < lens[:, None]
            mask = torch.zeros(visible.shape, dtype=torch.float32, device=self.device)
            ctx.decode_mask = mask.masked_fill_(~visible, float("-inf"))
        for seq, chunk in plan.prefill:
            start, end = seq.num_computed, seq.num_computed + chunk
            segment = PrefillSegment(
                start=len(ids),
                length=chunk,
                cached=start,
                block_table=self._tensor(seq.block_table[: -(-end // self.block_size)]),
            )
            if start:
                query = torch.arange(start, end, device=self.device)[:, None]
                segment.mask = torch.arange(end, device=self.device)[None, :] <= query
            ctx.prefills.append(segment)
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(self._slots(seq, start, end))
            if end == len(seq.token_ids):
                sampled_rows.append(len(ids) - 1)
                sampled.append(seq)
        ctx.slot_mapping = self._tensor(slots)
        ctx.media = step_media(self.model, plan, self.device)
        if self.states is not None:
            ctx.states = self.pending = self.states.step(plan)
        return self._tensor(ids), self._tensor(positions), ctx, sampled_rows, sampled

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
