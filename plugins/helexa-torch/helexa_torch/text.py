"""Text in and out of token ids: chat templates through transformers, and incremental
detokenization that never emits half a UTF-8 character."""

from __future__ import annotations

from typing import Any

from helexa.errors import ApiError
from helexa.neuron.harness import ChatPrompt, Prompt


def render_chat(tokenizer: Any, chat: ChatPrompt) -> Prompt:
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(
            400,
            "this model has no chat template; use /v1/completions with a raw prompt",
            code="no_chat_template",
        )
    try:
        text = tokenizer.apply_chat_template(
            chat.messages,
            tools=chat.tools,
            add_generation_prompt=chat.add_generation_prompt,
            continue_final_message=chat.continue_final,
            tokenize=False,
            **chat.template_kwargs,
        )
    except Exception as exc:  # jinja errors, raise_exception() in templates
        raise ApiError(
            422 if chat.tools else 400,
            f"the model's chat template rejected these messages: {exc}",
            code="template_render_failed",
        ) from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Prompt(text=text, token_ids=list(ids), messages=chat.messages)


def encode_text(tokenizer: Any, text: str) -> Prompt:
    return Prompt(text=text, token_ids=list(tokenizer(text)["input_ids"]))


def hidden_specials(tokenizer: Any, markers: set[str]) -> frozenset[int]:
    """Ids of the special tokens to leave out of generated text: all but the given markers
    (tool-call and think markers must reach the parsers)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, token in decoder.items() if getattr(token, "special", False)}
    keep = {i for i, token in decoder.items() if getattr(token, "content", str(token)) in markers}
    return frozenset(special - keep)


class Detokenizer:
    """Turns a growing list of token ids into text deltas.

    Each step decodes a small window (a few tokens of context plus the new ones) and
    emits only text that is complete: while the window ends in a partial UTF-8
    sequence (decoded as U+FFFD), nothing is emitted and the bytes wait for the
    tokens that finish them.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], hidden: frozenset[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.hidden = hidden
        self.ids = list(prompt_ids[-5:])  # context, so leading spaces decode as they do mid-text
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        if self.hidden is None:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        shown = [i for i in ids if i not in self.hidden]
        return self.tokenizer.decode(shown, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def add(self, new: list[int], final: bool = False) -> str:
        self.ids.extend(new)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""
