"""The torch harness: loads models into our engine and serves them through the harness contract."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from helexa.errors import ApiError
from helexa.neuron.harness import (
    ChatPrompt,
    Delta,
    GenerationRequest,
    HarnessContext,
    LoadedModel,
    LoadProgress,
    Prompt,
)
from helexa.neuron.parsing import detect_think_markers
from helexa.wire.fleet import ModelSpec
from helexa_torch import quant as quantize
from helexa_torch.engine.engine import Engine, deliver_each
from helexa_torch.engine.sequence import Sequence
from helexa_torch.loading import Checkpoint, locate, open_checkpoint
from helexa_torch.models.causal_lm import CausalLM, kv_bytes_per_token
from helexa_torch.plugin import FALLBACK
from helexa_torch.sizing import MB, available_cores, kv_budget, resident_mb, resolve_dtype
from helexa_torch.text import Detokenizer, encode_text, render_chat

log = logging.getLogger("helexa.torch")
T = TypeVar("T")


@dataclass
class Served:
    engine: Engine
    tokenizer: Any
    loaded: LoadedModel
    vocab_size: int
    threads: int | None
    """CPU threads the operator fixed for this model, or None for a fair share."""
    measured: dict[str, int]
    """Bytes measured once the model is built (``weights``)."""
    kv_mb: float = 0.0
    quantization: quantize.Quantization | None = None


class TorchHarness:
    name = "torch"

    def __init__(self, context: HarnessContext) -> None:
        self.context = context
        self.models: dict[str, Served] = {}

    def _architecture(self, config: Any) -> type[CausalLM]:
        """The native architecture for a config, else the transformers fallback, else a 422 naming both."""
        registry = self.context.plugins.architectures if self.context.plugins else None
        # A config that lists no architecture (a GGUF file's) is known by its model type.
        names = getattr(config, "architectures", None) or [getattr(config, "model_type", "")]
        for name in names:
            if registry is not None and name in registry.entries:
                return registry.get(name)()
        if registry is not None and FALLBACK in registry.entries:
            fallback = registry.get(FALLBACK)()
            reason = fallback.unsupported(config)
            if reason is None:
                return fallback
        else:
            reason = "the transformers fallback is not installed"
        native = ", ".join(
            n for n in (registry.names() if registry else []) if n.endswith("ForCausalLM") and n != FALLBACK
        )
        raise ApiError(
            422,
            f"architecture {names[0] or '?'!r} is not supported: no native architecture (native: "
            f"{native or 'none'}) and the transformers fallback cannot serve it ({reason})",
            code="unsupported_architecture",
        )

    def _device(self, devices: list[int]) -> torch.device:
        if len(devices) != 1:
            raise ApiError(
                400,
                "the torch harness runs a model on one device; tensor_parallel > 1 is not supported yet",
                param="tensor_parallel",
            )
        info = next(d for d in self.context.devices if d.index == devices[0])
        return torch.device(f"cuda:{info.index}") if info.kind == "cuda" else torch.device("cpu")

    async def load(self, spec: ModelSpec, devices: list[int], progress: LoadProgress) -> LoadedModel:
        options = {**self.context.options, **spec.options}
        device = self._device(devices)
        progress("locating weights", 0.0)
        path = await off_loop(
            locate,
            spec.model_id,
            options,
            self.context.model_roots,
            self.context.hf_cache,
            self.context.allow_downloads,
        )
        progress("reading config and tokenizer", 0.05)
        quant_name = spec.quant or options.get("quant")
        # bnb-* quantizes as the weights load; any other quant names a GGUF file of the folder.
        quantization = quantize.parse(quant_name, resolve_dtype(str(options.get("dtype", "auto")), device))
        checkpoint = await off_loop(open_checkpoint, path, None if quantization else quant_name)
        # The build runs on a thread that a cancelled load cannot stop; shielded, so that
        # whatever it started is still stopped and released when the load is abandoned.
        build = asyncio.ensure_future(
            off_loop(self._build, spec, checkpoint, options, device, devices[0], progress, quantization)
        )
        served: Served | None = None
        try:
            served = await asyncio.shield(build)
            loop = asyncio.get_running_loop()
            served.engine.deliver = lambda outputs: loop.call_soon_threadsafe(deliver_each, outputs)
            await asyncio.wrap_future(served.engine.ready)
            self._measured(served)
        except BaseException:
            build.add_done_callback(self._abandon)
            self.context.ledger.release(spec.model_id)
            raise
        self.models[spec.model_id] = served
        self._share_cores()
        return served.loaded

    @staticmethod
    def _abandon(build: asyncio.Future[Served]) -> None:
        if not build.cancelled() and build.exception() is None:
            build.result().engine.close()  # the engine thread ends once its model is built

    def _build(
        self,
        spec: ModelSpec,
        checkpoint: Checkpoint,
        options: dict[str, Any],
        device: torch.device,
        index: int,
        progress: LoadProgress,
        quantization: quantize.Quantization | None = None,
    ) -> Served:
        config = checkpoint.config
        dtype = resolve_dtype(str(options.get("dtype", "auto")), device)
        context_len = int(getattr(config, "max_position_embeddings", 4096) or 4096)
        max_len = int(options.get("max_model_len") or min(context_len, 32768))
        cls = self._architecture(config)
        with torch.device("meta"):  # shapes only: no memory until the weights stream in
            model = cls(config, device, max_len).to(dtype)
        if quantization is not None:
            quantize.defer_linears(model)
            weight_bytes = quantize.quantized_bytes(model, quantization)
        else:
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        per_token = kv_bytes_per_token(model, dtype)
        kv_bytes = kv_budget(options, device, weight_bytes)
        block_size = int(options.get("block_size", 16))
        num_blocks = kv_bytes // (per_token * block_size)
        if num_blocks * block_size < max_len:
            raise ApiError(
                422,
                f"the KV cache budget ({kv_bytes // MB} MB) holds {num_blocks * block_size} "
                f"tokens, fewer than one sequence of max_model_len={max_len}; raise kv_cache_mb "
                "or lower max_model_len",
                code="kv_cache_too_small",
            )
        need = (weight_bytes + num_blocks * block_size * per_token) // MB + 1
        self.context.ledger.reserve(spec.model_id, {index: need})

        measured: dict[str, int] = {}

        def materialize() -> CausalLM:  # runs on the engine's thread
            before, _ = resident_mb()
            built = model.materialize(device)
            progress("loading weights", 0.1)
            if quantization is not None:
                quantize.load_quantized(built, checkpoint.weights(progress), quantization, device)
            else:
                built.load_weights(checkpoint.weights(progress))
            measured["weights"] = quantize.resident_bytes(built)
            _, peak = resident_mb()
            if device.type == "cpu" and peak > before:
                progress(
                    f"weights loaded: {weight_bytes // MB} MB, peak memory growth "
                    f"{peak - before} MB ({(peak - before) * MB / max(weight_bytes, 1):.2f}x the weights)",
                    0.9,
                )
            progress("allocating the KV cache", 0.95)
            return built.eval()

        threads = int(options["threads"]) if options.get("threads") else None
        try:
            engine = Engine(
                spec.model_id,
                materialize,
                num_blocks=num_blocks,
                block_size=block_size,
                dtype=dtype,
                device=device,
                eos_ids=checkpoint.eos_ids,
                max_model_len=max_len,
                max_num_seqs=int(options.get("max_num_seqs", 64)),
                max_batched_tokens=int(
                    options.get("max_batched_tokens", 8192 if device.type == "cuda" else 512)
                ),
                threads=threads or self._fair_share(extra=1),
            )
        except BaseException:
            self.context.ledger.release(spec.model_id)
            raise
        tokenizer = checkpoint.tokenizer
        vocabulary = set(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else None
        loaded = LoadedModel(
            model_id=spec.model_id,
            devices=[index],
            memory_mb={index: need},
            capabilities=["text", "tools"] if "tools" in (tokenizer.chat_template or "") else ["text"],
            max_model_len=max_len,
            defaults=checkpoint.defaults,
            think_markers=detect_think_markers(vocabulary)
            if vocabulary and "<think>" in vocabulary
            else None,
            architecture=getattr(model, "architecture_name", cls.__name__),
            runtime="fallback" if cls.__name__ == FALLBACK else "native",
        )
        log.info(
            "%s: %s (%s) on %s, %d MB weights, KV cache %d tokens (%d B/token)",
            spec.model_id,
            loaded.architecture,
            loaded.runtime,
            device,
            weight_bytes // MB,
            num_blocks * block_size,
            per_token,
        )
        kv_mb = num_blocks * block_size * per_token / MB
        return Served(engine, tokenizer, loaded, model.vocab_size, threads, measured, kv_mb, quantization)

    def _measured(self, served: Served) -> None:
        """Report what the loaded weights really take (quantized sizes are only estimated before)."""
        if "weights" not in served.measured:
            return
        index = served.loaded.devices[0]
        need = int(served.measured["weights"] / MB + served.kv_mb) + 1
        served.loaded.memory_mb = {index: need}
        ledger = self.context.ledger
        ledger.reserved[served.loaded.model_id] = {index: need}

    def _fair_share(self, extra: int = 0) -> int:
        """CPU threads per engine when the cores are split evenly between this neuron's models."""
        return max(1, available_cores() // max(1, len(self.models) + extra))

    def _share_cores(self) -> None:
        share = self._fair_share()
        for served in self.models.values():
            if served.threads is None:
                served.engine.threads = share

    async def unload(self, model_id: str) -> None:
        served = self.models.pop(model_id, None)
        if served is not None:
            await off_loop(served.engine.stop)
            del served
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._share_cores()
        self.context.ledger.release(model_id)

    def _served(self, model_id: str) -> Served:
        served = self.models.get(model_id)
        if served is None:
            raise ApiError(
                404, f"model {model_id!r} is not loaded in the torch harness", code="model_not_found"
            )
        return served

    async def tokenize(self, model_id: str, source: ChatPrompt | str) -> Prompt:
        tokenizer = self._served(model_id).tokenizer
        if isinstance(source, str):
            return await off_loop(encode_text, tokenizer, source)
        return await off_loop(render_chat, tokenizer, source)

    async def generate(self, model_id: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        served = self._served(model_id)
        outputs: asyncio.Queue[tuple[list[int], str | None, str | None]] = asyncio.Queue()

        def emit(tokens: list[int], finish: str | None, error: str | None) -> None:
            outputs.put_nowait((tokens, finish, error))  # on the event loop (see load's deliver)

        prompt = request.prompt.token_ids
        if not prompt:
            raise ApiError(400, "the prompt is empty", param="messages")
        outside = [t for t in prompt if not 0 <= t < served.vocab_size]
        if outside:  # checked here: in the engine it would fail the whole batch's step
            raise ApiError(
                400,
                f"token id {outside[0]} is outside this model's vocabulary (0..{served.vocab_size - 1})",
                param="prompt",
                code="invalid_token_id",
            )
        seq = Sequence(
            id=request.request_id or secrets.token_hex(8),
            token_ids=list(prompt),
            sampling=request.sampling,
            emit=emit,
        )
        detokenizer = Detokenizer(served.tokenizer, prompt)
        eos = served.engine.eos_ids
        served.engine.submit(seq)
        finished = False
        try:
            while not finished:
                tokens, finish, error = await outputs.get()
                if error is not None:
                    raise ApiError(500, f"generation failed: {error}", code="engine_error")
                finished = finish is not None
                visible = [t for t in tokens if not (finish == "stop" and t in eos)]
                text = detokenizer.add(visible, final=finished)
                yield Delta(
                    text=text,
                    token_ids=tokens,
                    finish_reason=finish,
                    prompt_tokens=len(prompt) if finished else None,
                    cached_tokens=seq.cached_prompt,
                )
        finally:
            if not finished:
                served.engine.abort(seq)

    def memory(self) -> dict[str, dict[int, int]]:
        return {model_id: dict(served.loaded.memory_mb) for model_id, served in self.models.items()}

    async def close(self) -> None:
        for model_id in list(self.models):
            await self.unload(model_id)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work on an executor thread that never starts an OpenMP pool of its own.

    Only engine threads may run multi-threaded torch ops: a second pool on a small
    CPU makes libgomp throttle spinning, and every small op of the engine then pays
    a thread wake-up (about 20% of a decode step on two cores).
    """

    def call() -> T:
        torch.set_num_threads(1)
        return fn(*args)

    return await asyncio.to_thread(call)
