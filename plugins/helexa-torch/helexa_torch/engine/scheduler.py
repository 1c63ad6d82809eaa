"""What runs in each engine step: continuous batching with chunked prefill and preemption.

Every step first gives each decoding sequence its next token, then spends what is
left of the token budget on prompt chunks (sequences already prefilling first, then
new arrivals, which join the running batch at once). When the cache runs out, the
most recently admitted sequence is preempted: its blocks are freed and it is
recomputed later (its prompt and what it generated so far, often from the prefix
cache), which keeps outputs identical.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.sequence import Sequence


@dataclass
class Plan:
    decode: list[Sequence] = field(default_factory=list)
    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    """(sequence, tokens of its prompt to compute this step)."""

    def __bool__(self) -> bool:
        return bool(self.decode or self.prefill)

    @property
    def size(self) -> int:
        return len(self.decode) + len(self.prefill)

    def sequences(self) -> list[Sequence]:
        return [*self.decode, *(seq for seq, _ in self.prefill)]

    def sampled(self) -> list[Sequence]:
        """The sequences that get a new token this step: every decode, and prompts whose last chunk runs."""
        done = [seq for seq, chunk in self.prefill if seq.num_computed + chunk == len(seq.token_ids)]
        return [*self.decode, *done]

    def halves(self) -> tuple[Plan, Plan]:
        """Two plans with this one's sequences split between them (to find the one a step fails on)."""
        middle, decodes = self.size // 2, len(self.decode)
        cut = max(0, middle - decodes)
        return (
            Plan(self.decode[:middle], self.prefill[:cut]),
            Plan(self.decode[middle:], self.prefill[cut:]),
        )


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Plan:
        plan = Plan()
        budget = self.max_batched_tokens
        for seq in list(self.running):
            if seq.status != "running" or seq.remaining != 1:
                continue
            while not self.blocks.can_append(seq):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status == "running":
                self.blocks.append(seq)
                plan.decode.append(seq)
                budget -= 1
        for seq in self.running:  # prompts already being prefilled
            if budget <= 0:
                break
            if seq.status == "running" and seq.remaining > 1:
                chunk = min(seq.remaining, budget)
                plan.prefill.append((seq, chunk))
                budget -= chunk
        # Keep a block per running sequence in reserve so decodes can grow after admitting more.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if (
                seq.after is not None
                and seq.after.status != "finished"
                and seq.after.num_computed < seq.prompt_len
            ):
                break  # a sibling computes this prompt first; its cached blocks are then shared
            if not self.blocks.can_allocate(seq, reserve=len(self.running)):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = "running"
            self.running.append(seq)
            chunk = min(seq.remaining, budget)
            plan.prefill.append((seq, chunk))
            budget -= chunk
        return plan

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.status = "waiting"
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = "finished"
