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
        **values,
    )
