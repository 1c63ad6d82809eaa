"""HTTP routes of the neuron: the control API (JSON, litestar) and inference (plain ASGI)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar import asgi as asgi_route

from helexa.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    decode,
    read_body,
    send_error,
    send_json,
    stream,
    until_disconnect,
)
from helexa.buildinfo import build_info
from helexa.errors import ApiError
from helexa.neuron import completions as text_completions
from helexa.neuron import responses as responses_api
from helexa.neuron import serving
from helexa.neuron.harness import ChatPrompt
from helexa.openapi import RawRoute
from helexa.wire import openai as oa
from helexa.wire.fleet import (
    DiscoveryResponse,
    EndpointResponse,
    HealthResponse,
    LoadResponse,
    ModelInfo,
    ModelSpec,
    UnloadRequest,
)
from helexa.wire.responses import ResponsesRequest

if TYPE_CHECKING:
    from helexa.neuron.app import Neuron

log = logging.getLogger("helexa.neuron")


def neuron_of(app: Any) -> Neuron:
    return app.state.neuron


# --- control API (litestar: typed bodies, the neuron injected as `neuron`) ----------


@get("/version", sync_to_thread=False)
def version() -> dict[str, Any]:
    """Package version, git sha and the versions of what it runs on."""
    return build_info("neuron")


@get("/discovery", sync_to_thread=False)
def discovery(neuron: Neuron) -> DiscoveryResponse:
    """Hardware, harnesses and limits: what the gateway places models by."""
    return neuron.discovery()


@get("/health", sync_to_thread=False)
def health(neuron: Neuron) -> HealthResponse:
    """Uptime, per-device memory and pre-warm progress."""
    return neuron.health()


@get("/models", sync_to_thread=False)
def models(neuron: Neuron) -> list[ModelInfo]:
    """Every model this neuron has, loaded or on its way."""
    return neuron.manager.list()


@post("/models/load", status_code=200)
async def load(neuron: Neuron, data: ModelSpec) -> LoadResponse:
    """Load a model (returns once it is loaded, or with the reason it could not be)."""
    entry = await neuron.manager.load(data)
    return LoadResponse(status="loaded", model=entry.info())


@post("/models/unload", status_code=200)
async def unload(neuron: Neuron, data: UnloadRequest) -> LoadResponse:
    """Unload for good: device memory and any parked copy in host memory."""
    await neuron.manager.unload(data.model_id)
    return LoadResponse(status="unloaded")


@post("/models/park", status_code=200)
async def park(neuron: Neuron, data: UnloadRequest) -> LoadResponse:
    """Evict, keeping the weights in host memory where the harness and budget allow (else unload)."""
    outcome = await neuron.manager.park(data.model_id)
    entry = neuron.manager.entries.get(data.model_id)
    return LoadResponse(status=outcome, model=entry.info() if entry is not None else None)


@get("/models/{rest:path}", sync_to_thread=False)
def endpoint(neuron: Neuron, request: Request, rest: str) -> EndpointResponse:
    """The URL to send a model's inference requests to."""
    model_id, sep, tail = rest.strip("/").rpartition("/")
    if not sep or tail != "endpoint":
        raise ApiError(404, f"no route GET /models/{rest.strip('/')}; did you mean /models/<id>/endpoint?")
    neuron.manager.get(model_id)
    return EndpointResponse(url=neuron.public_url(request))


@get("/metrics", sync_to_thread=False)
def metrics(neuron: Neuron) -> Response[bytes]:
    """Prometheus text."""
    neuron.health()  # refreshes the memory gauges
    return Response(neuron.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/v1/models", sync_to_thread=False)
def openai_models(neuron: Neuron) -> oa.ModelList:
    """The loaded models, as OpenAI's model list."""
    manager = neuron.manager
    cards = [
        oa.ModelCard(id=info.id, created=int(info.loaded_at or time.time()), max_model_len=info.max_model_len)
        for info in manager.list()
        if info.status == "loaded"
    ]
    return oa.ModelList(data=cards)


@get("/v1/models/{model_id:path}", sync_to_thread=False)
def openai_model(request: Request, model_id: str) -> oa.ModelCard:
    """One loaded model, as ``client.models.retrieve`` asks for it."""
    wanted = model_id.strip("/")
    for info in neuron_of(request.app).manager.list():
        if info.id == wanted and info.status == "loaded":
            return oa.ModelCard(
                id=info.id, created=int(info.loaded_at or time.time()), max_model_len=info.max_model_len
            )
    raise ApiError(
        404, f"model {wanted!r} is not loaded on this neuron", code="model_not_found", param="model"
    )


# --- inference (plain ASGI: no buffering, disconnect aborts) --------------------

Handler = Callable[[Any, Scope, Receive, Send, bytes], Awaitable[None]]


def inference(path: str) -> Callable[[Handler], Any]:
    """A POST route that reads its body with the size limit and answers errors in OpenAI's envelope."""

    def wrap(handler: Handler) -> Any:
        @functools.wraps(handler)
        async def route(scope: Any, receive: Any, send: Any) -> None:
            neuron = neuron_of(scope["app"])
            route_name = path.rsplit("/", 1)[-1]
            try:
                if scope["method"] != "POST":
                    raise ApiError(405, f"{path} takes POST, not {scope['method']}")
                body = await read_body(receive, neuron.max_body, neuron.settings.http.body_timeout_s)
                await handler(neuron, scope, receive, send, body)
            except ClientGone:
                neuron.metrics.requests.labels("", route_name, "client_gone").inc()
            except ApiError as error:
                neuron.metrics.requests.labels("", route_name, f"error_{error.status}").inc()
                await send_error(send, error)
            except Exception as exc:
                log.exception("%s failed", path)
                await send_error(send, ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

        return asgi_route(path, is_mount=False, copy_scope=False)(route)

    return wrap


def _include_usage(request: oa.SamplingFields) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


@inference("/v1/chat/completions")
async def chat_completions(neuron: Any, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
    request = decode(body, oa.ChatCompletionRequest)
    job = await serving.prepare_chat(neuron.manager, request)
    await _answer(
        neuron,
        "chat",
        receive,
        send,
        job,
        request,
        lambda g: serving.chat_stream(neuron.manager, job, g, request.stream_options),
        lambda g: serving.chat_completion(neuron.manager, job, g),
    )


@inference("/v1/completions")
async def completions(neuron: Any, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
    request = decode(body, oa.CompletionRequest)
    job = await text_completions.prepare_completion(neuron.manager, request)
    await _answer(
        neuron,
        "completions",
        receive,
        send,
        job,
        request,
        lambda g: text_completions.completion_stream(
            neuron.manager, job, g, request.echo, _include_usage(request)
        ),
        lambda g: text_completions.completion(neuron.manager, job, g, request.echo),
    )


@inference("/v1/responses")
async def responses(neuron: Any, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
    request = decode(body, ResponsesRequest)
    prepared = await responses_api.prepare(neuron.manager, request)
    await _answer(
        neuron,
        "responses",
        receive,
        send,
        prepared.job,
        request,
        lambda g: responses_api.stream(neuron.manager, prepared, g[0]),
        lambda g: responses_api.response(neuron.manager, prepared, g[0]),
    )


async def _answer(
    neuron: Any,
    route: str,
    receive: Receive,
    send: Send,
    job: serving.Job,
    request: oa.SamplingFields | ResponsesRequest,
    streaming: Callable[[Any], Any],
    whole: Callable[[Any], Any],
) -> None:
    generation = serving.start(neuron.manager, job)  # 429 here, before any header
    counter = neuron.metrics.requests
    if request.stream:
        completed = await stream(receive, send, streaming(generation))
        counter.labels(job.model, route, "ok" if completed else "client_gone").inc()
        return
    try:
        answer = await until_disconnect(receive, whole(generation))
    except BaseException:
        await generation.aclose()
        raise
    counter.labels(job.model, route, "ok").inc()
    await send_json(send, 200, answer)


@inference("/v1/tokenize")
async def tokenize(neuron: Any, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
    request = decode(body, oa.TokenizeRequest)
    entry = neuron.manager.get(request.model)
    harness = neuron.manager.harness_of(entry)
    if request.messages is not None:
        source: Any = ChatPrompt(
            messages=serving.message_dicts(request.messages, "vision" in entry.loaded.capabilities),
            tools=[msgspec.to_builtins(t) for t in request.tools] if request.tools else None,
            template_kwargs=request.chat_template_kwargs or {},
            add_generation_prompt=request.add_generation_prompt,
        )
    elif request.prompt is not None:
        source = request.prompt
    else:
        raise ApiError(400, "give either messages or prompt to tokenize", param="messages")
    prompt = await harness.tokenize(request.model, source)
    await send_json(
        send,
        200,
        oa.TokenizeResponse(
            count=len(prompt.token_ids),
            max_model_len=entry.loaded.max_model_len,
            tokens=prompt.token_ids if request.return_tokens else None,
        ),
    )


DESCRIBED = [
    RawRoute("/v1/chat/completions", oa.ChatCompletionRequest, "OpenAI chat completions"),
    RawRoute("/v1/completions", oa.CompletionRequest, "OpenAI text completions"),
    RawRoute("/v1/responses", ResponsesRequest, "OpenAI Responses"),
    RawRoute("/v1/tokenize", oa.TokenizeRequest, "Count (and list) the tokens of a prompt", streams=False),
]
"""The raw inference routes, as ``/openapi.json`` describes them."""

ROUTES = [
    version,
    discovery,
    health,
    models,
    load,
    unload,
    park,
    endpoint,
    metrics,
    openai_models,
    openai_model,
    chat_completions,
    responses,
    completions,
    tokenize,
]
