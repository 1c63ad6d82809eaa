"""OpenAI chat completions, completions, tokenize and models requests (and the parts of answers
that are typed; answers themselves are built as plain JSON by the neuron's serving layer)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# --- requests ----------------------------------------------------------------


class ContentPart(msgspec.Struct, kw_only=True):
    """A part of a message's content: ``text``, ``image_url`` or ``input_audio``."""

    type: str
    text: str | None = None
    image_url: dict[str, Any] | str | None = None


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str | dict[str, Any] = "{}"
    """A JSON string per the API; an object is accepted too (some clients send one)."""


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: str = "function"


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDef(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    function: FunctionDef
    type: str = "function"


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False
    """vLLM's extension: usage on the first chunk too, so a translator knows the prompt size at once."""


Probability = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
TokenCount = Annotated[int, Meta(ge=1, le=10_000_000)]


class SamplingFields(msgspec.Struct, kw_only=True):
    """Parameters shared by chat completions and completions (OpenAI plus vLLM extras)."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=10)] | None = None
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    """A signed 64-bit value (a torch generator takes it; larger ones are refused, not wrapped)."""
    stop: str | list[str] | None = None
    n: Annotated[int, Meta(ge=1)] = 1
    ignore_eos: bool = False
    min_tokens: Annotated[int, Meta(ge=0)] = 0
    logprobs: bool | int | None = None
    """Chat: true to report log-probabilities; completions: how many alternatives (0..20)."""
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    best_of: int | None = None
    """Refused above 1: choices are never generated and then discarded."""
    structured_outputs: dict[str, Any] | None = None
    """vLLM's constraint: one of ``json`` (a schema), ``regex``, ``choice`` or ``grammar`` (Lark)."""
    user: str | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: TokenCount | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    reasoning_effort: str | None = None
    """none/minimal turn thinking off, low caps it; see `helexa.neuron.thinking`."""
    thinking_budget: Annotated[int, Meta(ge=0)] | None = None
    """helexa's extension: the most tokens the think block may take (Anthropic's budget_tokens)."""


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[str | int]
    echo: bool = False
    suffix: str | None = None


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/tokenize``: count the tokens of chat messages (with the template) or of plain text."""

    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    return_tokens: bool = False


class TokenizeResponse(msgspec.Struct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int] | None = None


# --- responses ---------------------------------------------------------------


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str = "helexa"
    object: str = "model"
    max_model_len: int | None = None


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelCard]
    object: str = "list"
