"""Choosing next tokens on the device: greedy at temperature 0, otherwise temperature, top-k,
top-p and min-p, with repetition, presence and frequency penalties, logit bias, grammar
masks for constrained sequences, per-request seeds, and log-probabilities where asked."""

from __future__ import annotations

import torch

from helexa_torch.engine import logprobs
from helexa_torch.engine.constraints import PendingMasks, advance
from helexa_torch.engine.sequence import Sequence

NEG_INF = float("-inf")


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition penalty over prompt and output (HF, vLLM); presence and frequency over output (OpenAI)."""
    for row, seq in enumerate(seqs):
        s = seq.sampling
        if s.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(
                values > 0, values / s.repetition_penalty, values * s.repetition_penalty
            )
        if (s.presence_penalty or s.frequency_penalty) and seq.generated:
            out = torch.tensor(seq.output_ids, dtype=torch.long, device=logits.device)
            counts = torch.zeros(logits.shape[1], device=logits.device).index_add_(
                0, out, torch.ones(len(out), device=logits.device)
            )
            logits[row] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).float()
    return logits


def apply_bias(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """OpenAI's logit_bias: added to the named tokens' logits (ids were checked against the vocabulary)."""
    for row, seq in enumerate(seqs):
        bias = seq.sampling.logit_bias
        if bias:
            ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
            logits[row, ids] += torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)


def filter_logits(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Mask tokens outside top-k, the top-p nucleus and the min-p floor (rows already temperature-scaled)."""
    vocab = logits.shape[1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        ordered, index = logits.sort(dim=-1, descending=True)
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = ranks >= k[:, None]
        probs = ordered.softmax(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses it stays)
        drop |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
        drop[:, 0] = False
        ordered = ordered.masked_fill(drop, NEG_INF)
        logits = torch.empty_like(logits).scatter_(1, index, ordered)
    if bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
        logits = logits.masked_fill(probs < floor, NEG_INF)
    return logits


class Sampler:
    def __init__(self, device: torch.device, eos_ids: set[int]) -> None:
        self.device = device
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if eos_ids else None
        self.default_generator = torch.Generator(device=device)
        self.default_generator.seed()

    def sample(
        self, logits: torch.Tensor, seqs: list[Sequence], masks: PendingMasks | None = None
    ) -> list[int]:
        asking = logprobs.wanted(seqs)
        model = logprobs.model_logprobs(logits, asking)  # before anything below changes the logits
        tokens = self._choose(logits, seqs, masks)
        logprobs.record(model, asking, seqs, tokens)
        advance(seqs, tokens)
        return tokens

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence], masks: PendingMasks | None) -> list[int]:
        logits = logits.float()
        # Before min_tokens, neither EOS nor a request's stop tokens may be drawn (as vLLM); a grammar
        # decides where a constrained sequence may end, so min_tokens does not apply to it.
        for row, s in enumerate(seqs):
            if s.generated < s.sampling.min_tokens and s.matcher is None:
                if self.eos is not None:
                    logits[row, self.eos] = NEG_INF
                if s.sampling.stop_token_ids:
                    logits[row, s.sampling.stop_token_ids] = NEG_INF
        if any(
            s.sampling.repetition_penalty != 1.0
            or s.sampling.presence_penalty
            or s.sampling.frequency_penalty
            for s in seqs
        ):
            logits = apply_penalties(logits, seqs)
        apply_bias(logits, seqs)
        if masks is not None:
            masks.apply(logits, seqs)
        greedy = [s.sampling.temperature <= 0 for s in seqs]
        if all(greedy):
            return logits.argmax(dim=-1).tolist()
        temps = torch.tensor([max(s.sampling.temperature, 1e-5) for s in seqs], device=self.device)
        scaled = filter_logits(
            logits / temps[:, None],
            # top_k beyond the vocabulary means no limit; clamped so any integer a client sends fits a tensor
            torch.tensor([min(s.sampling.top_k, logits.shape[1]) for s in seqs], device=self.device),
            torch.tensor([s.sampling.top_p for s in seqs], device=self.device),
            torch.tensor([s.sampling.min_p for s in seqs], device=self.device),
        )
        probs = scaled.softmax(dim=-1)
        # Exponential race (Gumbel-max): argmax(p / E) samples from p; each seeded request draws
        # from its own generator, so its text does not depend on what it was batched with.
        noise = torch.empty_like(probs)
        for row, seq in enumerate(seqs):
            noise[row].exponential_(generator=seq.generator or self.default_generator)
        chosen = (probs / noise).argmax(dim=-1)
        chosen = torch.where(torch.tensor(greedy, device=self.device), logits.argmax(dim=-1), chosen)
        return chosen.tolist()
