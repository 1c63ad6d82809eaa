"""A request inside the engine: its tokens, how far its cache is computed, and where its output goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helexa.neuron.harness import SamplingParams


@dataclass(eq=False)
class Sequence:
    id: str
    token_ids: list[int]
    sampling: SamplingParams
    emit: Callable[[list[int], str | None, int], None]
    """Called from the engine thread with (new tokens, finish reason, error message)."""
    prompt_len: int = 0
    num_computed: int = 0
    """Tokens whose keys and values are in the cache."""
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    """Chain hash of each full block, as far as registered."""
    cached_prompt: int = 0
    """Prompt tokens found in the prefix cache at admission."""
    status: str = "waiting"  # waiting | running | finished
    generator: Any = None
    finish_reason: str | None = None
    loop: Any = None
    """The event loop of the request's consumer, where ``emit`` must run."""
    matcher: Any = None
    """The grammar matcher (llguidance) of a constrained sequence; it advances with each sampled token."""
    logprobs: list[Any] = field(default_factory=list)
    """(token, logprob, top ids, top logprobs) per generated token, when the request asked for them;
    appended on the engine thread before the token is delivered, read by the harness after."""
    after: Sequence | None = None
    """A sibling (another of the n choices) whose prompt this one waits for, to reuse its cached blocks."""
    media: Any = None
    """The prompt's images (`engine.media.Media`) when it has any."""

    def __post_init__(self) -> None:
        self.prompt_len = self.prompt_len or len(self.token_ids)

    @property
    def generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def remaining(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    def block_tokens(self, start: int, end: int) -> tuple[int, ...]:
        """What identifies tokens ``start..end`` for prefix reuse: the ids, except that an image's
        placeholder tokens stand for that image (two images must never share a cached block)."""
        tokens = tuple(self.token_ids[start:end])
        return tokens if self.media is None else self.media.key_tokens(tokens, start)
