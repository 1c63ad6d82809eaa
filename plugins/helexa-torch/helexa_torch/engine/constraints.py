"""Token masks for constrained sequences (structured outputs, forced tool calls), with llguidance.

Each constrained sequence has a matcher that knows which tokens may come next. A step's
masks are computed on a helper thread while the model runs its forward pass (llguidance
works in Rust without the GIL, across its own threads), so a mask costs the batch
nothing unless it takes longer than the forward; the sampler then applies the masks to
the logits of those rows only, and free sequences in the same batch are untouched.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from helexa.errors import ApiError
from helexa.neuron.harness import Constraint
from helexa_torch.engine.sequence import Sequence


class GrammarBook:
    """One model's grammar machinery: its tokenizer as llguidance sees it (built once, ~1 s) and threads."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids)
        )
        self.executor = llguidance.LLExecutor()

    def matcher(self, constraint: Constraint) -> Any:
        """A fresh matcher for one sequence; a grammar this tokenizer cannot serve is a 400."""
        matcher = llguidance.LLMatcher(self.tokenizer, constraint.grammar, log_level=0)
        if matcher.is_error():
            raise ApiError(
                400,
                f"{constraint.param} cannot be enforced for this model: {matcher.get_error()}",
                param=constraint.param,
            )
        return matcher


class PendingMasks:
    """The masks of one step's constrained rows, being computed while the forward runs."""

    def __init__(self, rows: dict[Sequence, int], bitmask: torch.Tensor, done: Future[None]) -> None:
        self.rows = rows
        self.bitmask = bitmask
        self.done = done

    def apply(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        self.done.result()
        order = [(row, self.rows[seq]) for row, seq in enumerate(seqs) if seq in self.rows]
        if not order:
            return
        rows = torch.tensor([r for r, _ in order], device=logits.device)
        masks = self.bitmask[[m for _, m in order]].to(logits.device, non_blocking=True)
        constrained = logits[rows]
        llguidance.torch.apply_token_bitmask_inplace(constrained, masks)
        logits[rows] = constrained


class MaskWorker:
    """Starts each step's mask computation off the engine thread."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")

    def start(self, book: GrammarBook | None, seqs: list[Sequence]) -> PendingMasks | None:
        constrained = [seq for seq in seqs if seq.matcher is not None]
        if book is None or not constrained:
            return None
        rows = {seq: i for i, seq in enumerate(constrained)}
        bitmask = llguidance.torch.allocate_token_bitmask(len(constrained), book.vocab_size)
        pairs = [(seq.matcher, i) for seq, i in rows.items()]
        done = self.pool.submit(llguidance.torch.fill_next_token_bitmask_par, book.executor, pairs, bitmask)
        return PendingMasks(rows, bitmask, done)

    def close(self) -> None:
        self.pool.shutdown(wait=False)


def advance(seqs: list[Sequence], tokens: list[int]) -> None:
    """Feed each constrained sequence's matcher the token it sampled."""
    for seq, token in zip(seqs, tokens, strict=True):
        if seq.matcher is not None:
            seq.matcher.consume_token(token)
