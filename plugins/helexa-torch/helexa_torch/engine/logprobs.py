"""Log-probabilities of sampled tokens and their top alternatives, for the rows that ask.

They are the model's own distribution (log-softmax of the raw logits), taken before
penalties, bias, temperature or grammar masks change them, as OpenAI and vLLM report.
"""

from __future__ import annotations

import torch

from helexa_torch.engine.sequence import Sequence


def wanted(seqs: list[Sequence]) -> list[int]:
    return [row for row, seq in enumerate(seqs) if seq.sampling.logprobs is not None]


def model_logprobs(logits: torch.Tensor, rows: list[int]) -> torch.Tensor | None:
    """Log-softmax of the rows that report log-probabilities (before anything alters the logits)."""
    if not rows:
        return None
    return logits[torch.tensor(rows, device=logits.device)].float().log_softmax(dim=-1)


def record(logprobs: torch.Tensor | None, rows: list[int], seqs: list[Sequence], tokens: list[int]) -> None:
    """Append (token, logprob, top ids, top logprobs) to each asking sequence's list."""
    if logprobs is None:
        return
    chosen = torch.tensor([tokens[row] for row in rows], device=logprobs.device)
    values = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
    widest = max(seqs[row].sampling.logprobs or 0 for row in rows)
    if widest:
        top_values, top_ids = logprobs.topk(min(widest, logprobs.shape[1]), dim=-1)
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for i, row in enumerate(rows):
        seq, k = seqs[row], seqs[row].sampling.logprobs or 0
        top = (top_ids[i][:k], top_values[i][:k]) if k else ([], [])
        seq.logprobs.append((tokens[row], values[i], *top))
