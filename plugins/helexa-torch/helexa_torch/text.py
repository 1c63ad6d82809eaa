"""Text in and out of token ids: chat templates through transformers, and incremental
detokenization that never emits half a UTF-8 character."""

from __future__ import annotations

from typing import Any

from helexa.errors import ApiError
from helexa.neuron.harness import ChatPrompt, Prompt, TokenLogprob, TopLogprob


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


class TokenTexts:
    """Log-probability entries with each token's text and bytes (as OpenAI reports them)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def text(self, token: int) -> tuple[str, list[int]]:
        found = self.cache.get(token)
        if found is None:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            text = self.tokenizer.convert_tokens_to_string([piece]) if piece is not None else ""
            data = _token_bytes(self.tokenizer, piece) if piece is not None else []
            found = self.cache[token] = (text, data if data is not None else list(text.encode()))
        return found

    def entries(self, raw: list[tuple[int, float, list[int], list[float]]]) -> list[TokenLogprob]:
        out = []
        for token, logprob, top_ids, top_values in raw:
            text, data = self.text(token)
            top = [
                TopLogprob(token=t, logprob=v, bytes=b)
                for t, b, v in ((*self.text(i), v) for i, v in zip(top_ids, top_values, strict=True))
            ]
            out.append(TokenLogprob(token=text, logprob=logprob, bytes=data, top=top))
        return out


_BYTE_DECODER: dict[str, int] | None = None


def _token_bytes(tokenizer: Any, piece: str) -> list[int] | None:
    """A byte-level BPE token's exact bytes (part of a UTF-8 character decodes to U+FFFD otherwise)."""
    global _BYTE_DECODER
    if _BYTE_DECODER is None:
        printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        codes, extra = list(printable), 0
        for b in range(256):
            if b not in printable:
                printable.append(b)
                codes.append(256 + extra)
                extra += 1
        _BYTE_DECODER = {chr(c): b for b, c in zip(printable, codes, strict=True)}
    if piece in getattr(tokenizer, "all_special_tokens", ()):
        return list(piece.encode())
    try:
        return [_BYTE_DECODER[c] for c in piece]
    except KeyError:  # not a byte-level vocabulary (SentencePiece): the text's bytes will do
        return None
