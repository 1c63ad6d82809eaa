"""A prompt's images inside the engine, and what one step gives the model of them.

A vision prompt reaches the engine with each image preprocessed (pixel patches and its grid)
and with one placeholder token per embedding the vision tower will produce. The tower runs when
the prompt is first prefilled, once for all its images, and its output stays on the sequence:
a chunked prefill takes the rows it needs chunk by chunk, and a preempted sequence recomputes
its KV and states from the same embeddings without running the tower again.

Positions are three-dimensional (temporal, height, width: multimodal rotary positions). Text
tokens have the same position in all three; an image's tokens count its grid's rows and columns
from where the image starts, and the text after it resumes past the larger side. Every token
after the prompt sits at its index plus the prompt's ``delta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helexa_torch.engine.scheduler import Plan


@dataclass(eq=False)
class Media:
    pixel_values: torch.Tensor
    """Every image's patches, in prompt order (as the model's image processor made them)."""
    grids: torch.Tensor
    """[images, 3] long: each image's (temporal, height, width) patch grid."""
    spans: list[tuple[int, int, int]]
    """(first token, end, image key) of each image's placeholder tokens in the prompt."""
    positions: torch.Tensor
    """[3, prompt tokens] long: the prompt's multimodal rotary positions."""
    delta: int
    """Position minus index of every token after the prompt."""
    embeds: torch.Tensor | None = None
    """[image tokens, hidden]: the vision tower's output for all images, once it has run."""

    @property
    def image_tokens(self) -> int:
        return sum(end - start for start, end, _ in self.spans)

    def key_tokens(self, tokens: tuple[int, ...], start: int) -> tuple[int, ...]:
        """``tokens`` (which begin at prompt index ``start``) with each image token replaced by
        its image's key, a negative number no real token has."""
        end = start + len(tokens)
        if not any(first < end and start < last for first, last, _ in self.spans):
            return tokens
        out = list(tokens)
        for first, last, key in self.spans:
            for index in range(max(first, start), min(last, end)):
                out[index - start] = key
        return tuple(out)

    def rows_between(self, start: int, end: int) -> tuple[list[int], list[int]]:
        """Prompt indices of image tokens in ``[start, end)`` and their rows in ``embeds``."""
        indices, rows, row = [], [], 0
        for first, last, _ in self.spans:
            for index in range(max(first, start), min(last, end)):
                indices.append(index)
                rows.append(row + index - first)
            row += last - first
        return indices, rows


@dataclass
class StepMedia:
    """One step's image inputs: which rows of the flat batch take image embeddings, and every
    token's 3D position."""

    positions: torch.Tensor
    """[3, tokens] long."""
    rows: torch.Tensor | None = None
    """Rows of the flat batch that are image tokens (long), or None in a step without any."""
    embeds: torch.Tensor | None = None
    """[rows, hidden]: their embeddings."""

    def to(self, device: torch.device | str) -> StepMedia:
        """The same inputs on ``device`` (a tensor-parallel step sends them to its workers on the CPU)."""
        return StepMedia(
            positions=self.positions.to(device),
            rows=None if self.rows is None else self.rows.to(device),
            embeds=None if self.embeds is None else self.embeds.to(device),
        )


def step_media(model, plan: Plan, device: torch.device) -> StepMedia | None:
    """The step's image inputs, running the vision tower for prompts that have not been through it.

    None when no sequence of the step has images (positions stay one-dimensional)."""
    if not any(seq.media is not None for seq in plan.decode) and not any(
        seq.media is not None for seq, _ in plan.prefill
    ):
        return None
    columns: list[torch.Tensor] = []
    for seq in plan.decode:
        position = len(seq.token_ids) - 1
        columns.append(torch.full((3, 1), position + (seq.media.delta if seq.media else 0)))
    rows: list[int] = []
    pieces: list[torch.Tensor] = []
    offset = len(plan.decode)
    for seq, chunk in plan.prefill:
        start, end, media = seq.num_computed, seq.num_computed + chunk, seq.media
        if media is None:
            columns.append(torch.arange(start, end).expand(3, -1))
        else:
            prompt_end = min(end, media.positions.shape[1])
            if start < prompt_end:
                columns.append(media.positions[:, start:prompt_end])
            if end > prompt_end:  # generated tokens recomputed after a preemption
                columns.append(torch.arange(max(start, prompt_end), end).expand(3, -1) + media.delta)
            indices, embed_rows = media.rows_between(start, end)
            if indices:
                if media.embeds is None:
                    media.embeds = model.encode_images(media.pixel_values, media.grids)
                rows.extend(offset + i - start for i in indices)
                pieces.append(media.embeds[torch.tensor(embed_rows, device=media.embeds.device)])
        offset += chunk
    step = StepMedia(positions=torch.cat(columns, dim=1).to(device))
    if rows:
        step.rows = torch.tensor(rows, dtype=torch.long, device=device)
        step.embeds = torch.cat(pieces).to(device)
    return step
