"""Thinking done right: the template's switch, a budget on the think block, and prefill.

- ``enable_thinking`` (chat_template_kwargs, Anthropic ``thinking``) and
  ``reasoning_effort`` (OpenAI, Responses ``reasoning.effort``, Anthropic
  ``output_config.effort``) become the template's switch; ``none``/``minimal``
  turn thinking off, ``low`` caps it at `LOW_EFFORT_BUDGET` tokens.
- A budget (``thinking_budget``; Anthropic ``budget_tokens``) caps the tokens
  generated inside the think block: at the cap the block is closed (the close
  marker is appended after what was generated) and generation continues from
  there, so the answer follows. Thinking switched off is a budget of 0, which also
  covers templates that always open the block.
- A last assistant message is a prefill: the prompt ends inside it, and the model
  continues it instead of starting a new turn.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from helexa.errors import ApiError
from helexa.neuron.harness import ChatPrompt, Delta, Prompt
from helexa.neuron.parsing import prompt_in_reasoning

log = logging.getLogger("helexa.neuron.thinking")

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
LOW_EFFORT_BUDGET = 1024
CLOSE_SUFFIX = "\n\n"


def template_kwargs(request: Any) -> dict[str, Any]:
    """chat_template_kwargs with the reasoning switch the request asks for."""
    kwargs = dict(getattr(request, "chat_template_kwargs", None) or {})
    effort = getattr(request, "reasoning_effort", None)
    if effort is not None:
        if effort not in EFFORTS:
            raise ApiError(
                400,
                f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {effort!r}",
                param="reasoning_effort",
            )
        kwargs.setdefault("reasoning_effort", effort)  # templates such as gpt-oss read it directly
        kwargs.setdefault("enable_thinking", effort not in ("none", "minimal"))
    return kwargs


def budget(request: Any, kwargs: dict[str, Any]) -> int | None:
    """Tokens the think block may take: None for no cap."""
    if kwargs.get("enable_thinking") is False:
        return 0
    given = getattr(request, "thinking_budget", None)
    if given is not None:
        return given
    if getattr(request, "reasoning_effort", None) == "low":
        return LOW_EFFORT_BUDGET
    return None


def chat_prompt(
    request: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> ChatPrompt:
    """The prompt to render: thinking switch applied, a trailing assistant message continued."""
    kwargs = template_kwargs(request)
    prefill = bool(messages) and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    return ChatPrompt(
        messages=messages,
        tools=tools,
        template_kwargs=kwargs,
        add_generation_prompt=not prefill,
        continue_final=prefill,
    )


def _ids_without_specials(prompt: Prompt, empty: Prompt) -> list[int]:
    """Token ids of a text, minus what the tokenizer adds to any text (a BOS)."""
    ids = prompt.token_ids
    head = empty.token_ids
    return ids[len(head) :] if head and ids[: len(head)] == head else ids


class ThinkingBudget:
    """A `Generation` whose think block ends after ``limit`` tokens; counts reasoning tokens.

    Iterates like the generation it wraps. When the cap is reached inside the block,
    the sequence is restarted from the prompt plus what was generated plus the close
    marker (the prefix cache makes that a short prefill), in the same admission slot.
    """

    def __init__(self, generation: Any, job: Any, markers: tuple[str, str], limit: int | None) -> None:
        self.generation = generation
        self.job = job
        self.markers = markers
        self.limit = limit
        self.inside = prompt_in_reasoning(job.prompt.text, markers)
        self.reasoning_tokens = 0
        self.text = ""
        self.ids: list[int] = []
        self.pending: list[Delta] = []

    @property
    def ticket(self) -> Any:
        return self.generation.ticket

    @property
    def finished(self) -> bool:
        return self.generation.finished

    @finished.setter
    def finished(self, value: bool) -> None:
        self.generation.finished = value

    def __aiter__(self) -> ThinkingBudget:
        return self

    async def aclose(self, reason: str = "client") -> None:
        await self.generation.aclose(reason)

    async def __anext__(self) -> Delta:
        if self.pending:
            return self.pending.pop(0)
        if self.inside and self.limit is not None and self.reasoning_tokens >= self.limit:
            return await self._close_block()
        delta = await self.generation.__anext__()
        self.text += delta.text
        self.ids.extend(delta.token_ids)
        if self.inside and delta.text.strip() not in self.markers:  # a marker is not reasoning
            self.reasoning_tokens += len(delta.token_ids)
        self._track(delta.text)
        return delta

    def _track(self, text: str) -> None:
        window = self.text[-(len(text) + 16) :]
        opened, closed = window.rfind(self.markers[0]), window.rfind(self.markers[1])
        if closed > opened:
            self.inside = False
        elif opened > closed:
            self.inside = True

    async def _close_block(self) -> Delta:
        """End the think block now: restart the sequence after the close marker."""
        close = self.markers[1] + CLOSE_SUFFIX
        manager, job = self.generation.manager, self.job
        harness = manager.harness_of(job.entry)
        empty = await harness.tokenize(job.model, "")
        close_ids = _ids_without_specials(await harness.tokenize(job.model, close), empty)
        prompt = Prompt(
            text=job.prompt.text + self.text + close,
            token_ids=[*job.prompt.token_ids, *self.ids, *close_ids],
            messages=job.prompt.messages,
            media=job.prompt.media,  # the images stay where they were
        )
        left = job.sampling.max_tokens - len(self.ids) - len(close_ids)
        self.inside = False
        if left <= 0:
            self.generation.finished = True
            return Delta(text=close, token_ids=close_ids, finish_reason="length")
        sampling = job.sampling.__class__(**{**_fields(job.sampling), "max_tokens": left})
        log.debug(
            "thinking budget of %s tokens reached for %s: closing the think block", self.limit, job.model
        )
        await self.generation.resume(
            msgspec.structs.replace(self.generation.request, prompt=prompt, sampling=sampling, group=None)
        )
        self.text += close
        self.ids.extend(close_ids)
        return Delta(text=close, token_ids=close_ids)


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def wrap(generation: Any, job: Any) -> Any:
    """The generation, budgeted and counted when the model thinks; as is otherwise."""
    loaded = job.entry.loaded
    markers = loaded.think_markers if loaded is not None else None
    if markers is None or not job.reasoning:
        return generation
    return ThinkingBudget(generation, job, markers, getattr(job, "thinking_budget", None))
