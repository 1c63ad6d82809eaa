"""Resolving a request's sampling parameters: request, then the model's generation config, then defaults."""

from __future__ import annotations

from typing import Any

from helexa.errors import ApiError
from helexa.neuron.harness import SamplingParams
from helexa.wire.openai import ChatCompletionRequest, SamplingFields

FALLBACK: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


def context_error(max_len: int, prompt_len: int, asked: int | None = None) -> ApiError:
    if asked is None:
        message = (
            f"This model's maximum context length is {max_len} tokens. However, your messages "
            f"resulted in {prompt_len} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {max_len} tokens. However, you requested "
            f"{prompt_len + asked} tokens ({prompt_len} in the messages, {asked} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return ApiError(
        400,
        message,
        code="context_length_exceeded",
        param="messages",
        extras={
            "prompt_len": prompt_len,
            "max": max_len,
            **({"max_tokens": asked} if asked is not None else {}),
        },
    )


def resolve_sampling(
    request: SamplingFields,
    defaults: dict[str, Any],
    max_model_len: int,
    prompt_len: int,
) -> SamplingParams:
    """The parameters the engine runs with; a prompt that does not fit is a 400, never truncated."""
    if prompt_len >= max_model_len:
        raise context_error(max_model_len, prompt_len)
    asked = request.max_tokens
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        asked = request.max_completion_tokens
    room = max_model_len - prompt_len
    if asked is not None and asked > room:
        raise context_error(max_model_len, prompt_len, asked)
    values = {}
    for name, fallback in FALLBACK.items():
        given = getattr(request, name)
        values[name] = given if given is not None else defaults.get(name, fallback)
    if values["top_k"] is not None and values["top_k"] < 0:
        values["top_k"] = 0  # vLLM's -1 means "off", as does 0 here
    max_tokens = asked if asked is not None else room
    if request.min_tokens > max_tokens:
        raise ApiError(
            400,
            f"min_tokens ({request.min_tokens}) is larger than max_tokens ({max_tokens})",
            param="min_tokens",
        )
    return SamplingParams(
        max_tokens=max_tokens,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
        logprobs=logprob_count(request),
        logit_bias=logit_bias(request.logit_bias),
        **values,
    )


MAX_LOGPROBS = 20


def logprob_count(request: SamplingFields) -> int | None:
    """How many alternatives to report per token (None: no log-probabilities).

    Chat takes ``logprobs: true`` and ``top_logprobs``; completions take ``logprobs: N``.
    """
    if isinstance(request, ChatCompletionRequest):
        if request.logprobs not in (None, False, True):
            raise ApiError(400, "logprobs must be true or false for chat completions", param="logprobs")
        if request.top_logprobs is not None and not request.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
        return (request.top_logprobs or 0) if request.logprobs else None
    if request.logprobs is None or request.logprobs is False:
        return None
    count = int(request.logprobs)
    if not 0 <= count <= MAX_LOGPROBS:
        raise ApiError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}, got {count}", param="logprobs")
    return count


def logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias (token id strings to -100..100) with ids as integers."""
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(
                400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        if token < 0:
            raise ApiError(400, f"logit_bias token id {token} is negative", param="logit_bias")
        out[token] = float(value)
    return out
