"""The torch harness: loads models into our engine and serves them through the harness contract.

It parks too (`helexa.neuron.harness.Parking`): a parked model's engine and KV cache
are freed; on CUDA its weights move to pinned host memory (the copy back runs at
full PCIe speed), on a CPU they stay where they are. A wake builds a new engine and
KV cache around the same weights, so it answers exactly as the model did before.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
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
from helexa.neuron.toolformats import ToolFormats
from helexa.wire.fleet import ModelSpec
from helexa_torch import quant as quantize
from helexa_torch import sharding
from helexa_torch.engine.constraints import GrammarBook
from helexa_torch.engine.engine import Engine, Output, deliver_each
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget, plan_states
from helexa_torch.images import ImagePrompts
from helexa_torch.loading import Checkpoint, locate, open_checkpoint
from helexa_torch.models.causal_lm import CausalLM, kv_bytes_per_token
from helexa_torch.models.packed import can_pack
from helexa_torch.plugin import FALLBACK
from helexa_torch.ranks import RankGroup, RankSpec, TensorParallelRunner, build_shard, load_shard
from helexa_torch.sizing import MB, available_cores, kv_budget, resident_mb, resolve_dtype
from helexa_torch.text import Detokenizer, TokenTexts, encode_text, hidden_specials, render_chat

log = logging.getLogger("helexa.torch")


def deliver_on_their_loops(outputs: list[Output]) -> None:
    """Hand a step's outputs to the event loops their requests wait on (one call per loop).

    From the engine thread; a neuron has one loop, tests and embedders may have several.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[Output]] = {}
    for output in outputs:
        by_loop.setdefault(output[0].loop, []).append(output)
    for loop, group in by_loop.items():
        loop.call_soon_threadsafe(deliver_each, group)


T = TypeVar("T")


@dataclass(frozen=True)
class EngineShape:
    """How a model's engine is built, kept so that a parked model's engine can be rebuilt on wake."""

    num_blocks: int
    block_size: int
    dtype: torch.dtype
    device: torch.device
    eos_ids: set[int]
    max_model_len: int
    max_num_seqs: int
    max_batched_tokens: int
    state_cache: Any = None
    """A hybrid model's recurrent-state plan (`plan_states`); None for attention-only models."""


@dataclass
class Served:
    engine: Engine
    tokenizer: Any
    loaded: LoadedModel
    vocab_size: int
    threads: int | None
    """CPU threads the operator fixed for this model, or None for a fair share."""
    shape: EngineShape
    weight_bytes: int
    groups: dict[str, Sequence] = field(default_factory=dict)
    """The first sequence of each group of n choices still prefilling, which its siblings wait for."""
    grammar_ready: asyncio.Lock = field(default_factory=asyncio.Lock)
    hidden: frozenset[int] = frozenset()
    """Special tokens left out of the text; tool and think markers stay, so parsing sees them."""
    measured: dict[str, int] = field(default_factory=dict)
    """Bytes measured once the model is built (``weights``)."""
    kv_mb: float = 0.0
    """The KV cache (and recurrent states) it holds."""
    quantization: quantize.Quantization | None = None
    images: ImagePrompts | None = None
    """How a vision model's prompts with images are prepared; None for text-only models."""
    group: RankGroup | None = None
    """The other ranks of a tensor-parallel model (None for one rank)."""


@dataclass
class Parked:
    """A parked model: its weights in host memory and what it takes to serve it again."""

    model: CausalLM
    served: Served
    """As it was served; its engine is stopped and holds nothing."""


class TorchHarness:
    name = "torch"

    def __init__(self, context: HarnessContext) -> None:
        self.context = context
        self.models: dict[str, Served] = {}
        self.parked: dict[str, Parked] = {}

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
            raise ApiError(400, "a tensor-parallel model cannot be parked or woken", param="tensor_parallel")
        return self._rank_devices(devices, 1)[0]

    def _rank_devices(self, devices: list[int], size: int) -> list[torch.device]:
        """The device of each rank: one GPU each, or every rank on the CPU of a CPU-only neuron."""
        infos = [next(d for d in self.context.devices if d.index == index) for index in devices]
        if all(info.kind != "cuda" for info in infos):
            return [torch.device("cpu")] * size  # CPU ranks share the cores between them
        if len(infos) != size:
            raise ApiError(
                400,
                f"tensor_parallel={size} needs {size} GPUs, got devices {devices}",
                param="tensor_parallel",
            )
        return [torch.device(f"cuda:{info.index}") for info in infos]

    async def load(self, spec: ModelSpec, devices: list[int], progress: LoadProgress) -> LoadedModel:
        options = {**self.context.options, **spec.options}
        ranks = self._rank_devices(devices, spec.tensor_parallel or len(devices))
        device = ranks[0]
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
            off_loop(self._build, spec, checkpoint, options, ranks, devices, progress, quantization)
        )
        served: Served | None = None
        try:
            served = await asyncio.shield(build)
            served.engine.deliver = deliver_on_their_loops
            await asyncio.wrap_future(served.engine.ready)
            self._measured(served)
            if served.group is not None:
                loop = asyncio.get_running_loop()
                served.group.watch(partial(self._rank_lost, loop, spec.model_id, served))
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
            served = build.result()
            served.engine.close()  # the engine thread ends once its model is built
            if served.group is not None:
                threading.Thread(target=served.group.close, name="tp-close", daemon=True).start()

    def _rank_lost(self, loop: asyncio.AbstractEventLoop, model_id: str, served: Served, reason: str) -> None:
        """A rank of a tensor-parallel model died (any thread): fail its streams, stop the rest, report it."""
        log.error("%s: %s; the model is failed (load it again to serve it)", model_id, reason)
        served.engine.fail(f"the model failed: {reason}")
        try:
            loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self._drop_failed(model_id, served, reason))
            )
        except RuntimeError:  # the event loop is closed: the process is ending anyway
            pass

    async def _drop_failed(self, model_id: str, served: Served, reason: str) -> None:
        if self.models.get(model_id) is served:
            del self.models[model_id]
            self.context.ledger.release(model_id)
            if self.context.model_failed is not None:
                self.context.model_failed(model_id, reason)
        await off_loop(served.engine.stop)
        if served.group is not None:
            await off_loop(served.group.close)
        self._share_cores()

    def _build(
        self,
        spec: ModelSpec,
        checkpoint: Checkpoint,
        options: dict[str, Any],
        ranks: list[torch.device],
        devices: list[int],
        progress: LoadProgress,
        quantization: quantize.Quantization | None = None,
    ) -> Served:
        config = checkpoint.config
        device, index, size = ranks[0], devices[0], len(ranks)
        dtype = resolve_dtype(str(options.get("dtype", "auto")), device)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        context_len = int(getattr(text, "max_position_embeddings", 4096) or 4096)
        max_len = int(options.get("max_model_len") or min(context_len, 32768))
        cls = self._architecture(config)
        # Several ranks: each builds and loads only its slice (see `sharding`), this one rank 0.
        shard = sharding.plan(config, 0, size) if size > 1 else None
        if shard is not None:
            model = build_shard(config, cls, shard, device, max_len).to(dtype)
        else:
            with torch.device("meta"):  # shapes only: no memory until the weights stream in
                model = cls(config, device, max_len).to(dtype)
        if quantization is not None:
            quantize.defer_linears(model)
            model.copy_tied_head = False  # quantizing is for memory: no float copy of a tied head
            weight_bytes = quantize.quantized_bytes(model, quantization)
        else:
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # On a CPU a tied head gets a copy laid out for oneDNN (see `packed`): count it.
        head_copy = model.packed_head_bytes(device, dtype) if isinstance(model, CausalLM) else 0
        weight_bytes += head_copy
        per_token = kv_bytes_per_token(model, dtype)
        kv_bytes = kv_budget(options, device, weight_bytes)
        max_num_seqs = int(options.get("max_num_seqs", 64))
        states, state_bytes = None, 0
        if getattr(model, "linear_layers", None):  # hybrid: recurrent states come out of the same budget
            states, state_bytes = plan_states(model, options, dtype, max_num_seqs, kv_bytes)
            kv_bytes -= state_bytes
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
        need = (weight_bytes + num_blocks * block_size * per_token + state_bytes) // MB + 1
        # Per rank: each GPU holds one rank; the CPU of a CPU-only neuron holds them all.
        memory = dict.fromkeys(devices, need) if len(devices) == size else {index: need * size}
        self.context.ledger.reserve(spec.model_id, memory)

        measured: dict[str, int] = {}
        threads = int(options["threads"]) if options.get("threads") else None
        group: RankGroup | None = None
        if shard is not None:
            threads = threads or max(1, self._fair_share(extra=1) // size)
            try:
                group = self._start_ranks(
                    spec,
                    checkpoint,
                    config,
                    cls,
                    ranks,
                    dtype,
                    max_len,
                    threads,
                    num_blocks,
                    block_size,
                    quantization,
                    states,
                )
            except BaseException:
                self.context.ledger.release(spec.model_id)
                raise

        def materialize() -> CausalLM:  # runs on the engine's thread
            before, _ = resident_mb()
            progress("loading weights", 0.1)
            if shard is not None:
                built = load_shard(model, checkpoint.weights(progress), shard, device, quantization)
                progress(f"waiting for the other {size - 1} rank(s)", 0.85)
                measured["ranks"] = group.wait_loaded()
                group.join()
                sharding.attach_reducers(built, group.all_reduce)
                measured["weights"] = quantize.resident_bytes(built) + head_copy
                return built
            built = model.materialize(device)
            if quantization is not None:
                quantize.load_quantized(built, checkpoint.weights(progress), quantization, device)
            else:
                built.load_weights(checkpoint.weights(progress), pack=can_pack(device))
            measured["weights"] = quantize.resident_bytes(built) + head_copy
            _, peak = resident_mb()
            if device.type == "cpu" and peak > before:
                progress(
                    f"weights loaded: {weight_bytes // MB} MB, peak memory growth "
                    f"{peak - before} MB ({(peak - before) * MB / max(weight_bytes, 1):.2f}x the weights)",
                    0.9,
                )
            progress("allocating the KV cache", 0.95)
            return built.eval()

        shape = EngineShape(
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=dtype,
            device=device,
            eos_ids=checkpoint.eos_ids,
            max_model_len=max_len,
            max_num_seqs=max_num_seqs,
            max_batched_tokens=int(options.get("max_batched_tokens", 8192 if device.type == "cuda" else 512)),
            state_cache=states,
        )
        runner = partial(TensorParallelRunner, group=group) if group is not None else None
        try:
            engine = self._engine(spec.model_id, materialize, shape, threads, runner)
        except BaseException:
            self.context.ledger.release(spec.model_id)
            if group is not None:
                group.close()
            raise
        tokenizer = checkpoint.tokenizer
        vocabulary = set(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else None
        images = ImagePrompts.for_model(model, checkpoint.source, tokenizer)
        capabilities = ["text", "tools"] if "tools" in (tokenizer.chat_template or "") else ["text"]
        loaded = LoadedModel(
            model_id=spec.model_id,
            devices=list(devices),
            memory_mb=memory,
            capabilities=capabilities + (["vision"] if images is not None else []),
            max_model_len=max_len,
            defaults=checkpoint.defaults,
            think_markers=detect_think_markers(vocabulary)
            if vocabulary and "<think>" in vocabulary
            else None,
            architecture=getattr(model, "architecture_name", cls.__name__),
            runtime="fallback" if cls.__name__ == FALLBACK else "native",
            constraints=True,
            chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
            special_tokens=[
                t for t in getattr(tokenizer, "get_added_vocab", dict)() if t.startswith(("<", "["))
            ],
        )
        markers = ToolFormats(self.context.plugins).markers() | set(loaded.think_markers or ())
        log.info(
            "%s: %s (%s) on %s, %d MB weights, KV cache %d tokens (%d B/token)%s",
            spec.model_id,
            loaded.architecture,
            loaded.runtime,
            device,
            weight_bytes // MB,
            num_blocks * block_size,
            per_token,
            f", per rank of {size} tensor-parallel ranks" if size > 1 else "",
        )
        return Served(
            engine,
            tokenizer,
            loaded,
            model.vocab_size,
            threads,
            shape,
            weight_bytes,
            hidden=hidden_specials(tokenizer, markers),
            measured=measured,
            kv_mb=(num_blocks * block_size * per_token + state_bytes) / MB,
            quantization=quantization,
            images=images,
            group=group,
        )

    def _start_ranks(
        self,
        spec: ModelSpec,
        checkpoint: Checkpoint,
        config: Any,
        cls: type[CausalLM],
        ranks: list[torch.device],
        dtype: torch.dtype,
        max_len: int,
        threads: int,
        num_blocks: int,
        block_size: int,
        quantization: quantize.Quantization | None = None,
        states: StateBudget | None = None,
    ) -> RankGroup:
        """Spawn the worker ranks; they load their shards while this thread builds rank 0."""
        timeout = float(self.context.options.get("tp_timeout_s", spec.options.get("tp_timeout_s", 300)))

        def spec_for(port: int) -> RankSpec:
            return RankSpec(
                model_id=spec.model_id,
                architecture=cls,
                config=config,
                path=checkpoint.source,  # the very file or folder: no quant to pick a GGUF file again
                gguf_quant=None,
                quantization=quantization,
                dtype=dtype,
                max_len=max_len,
                num_blocks=num_blocks,
                block_size=block_size,
                devices=tuple(str(d) for d in ranks),
                threads=threads,
                store_port=port,
                timeout_s=timeout,
                states=states,
            )

        return RankGroup(spec_for)

    def _engine(
        self,
        model_id: str,
        model: Callable[[], CausalLM],
        shape: EngineShape,
        threads: int | None,
        runner: Callable[..., Any] | None = None,
    ) -> Engine:
        return Engine(
            model_id,
            model,
            num_blocks=shape.num_blocks,
            block_size=shape.block_size,
            dtype=shape.dtype,
            device=shape.device,
            eos_ids=shape.eos_ids,
            max_model_len=shape.max_model_len,
            max_num_seqs=shape.max_num_seqs,
            max_batched_tokens=shape.max_batched_tokens,
            threads=threads or self._fair_share(extra=1),
            state_cache=shape.state_cache,
            **({"runner": runner} if runner is not None else {}),
        )

    def _measured(self, served: Served) -> None:
        """Report what the loaded weights really take (quantized sizes are only estimated before)."""
        if "weights" not in served.measured:
            return
        devices = served.loaded.devices
        weights = [served.measured["weights"], *served.measured.get("ranks", [])]
        per_rank = [int(w / MB + served.kv_mb) + 1 for w in weights]
        if len(devices) == len(per_rank):  # a device per rank
            memory = dict(zip(devices, per_rank, strict=True))
        else:  # every rank on the CPU
            memory = {devices[0]: sum(per_rank)}
        served.loaded.memory_mb = memory
        ledger = self.context.ledger
        ledger.reserved[served.loaded.model_id] = dict(memory)

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
        parked = self.parked.pop(model_id, None)
        if served is not None:
            await off_loop(served.engine.stop)
            if served.group is not None:
                await off_loop(served.group.close)
        del served, parked  # the last references: weights and cache go with them
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._share_cores()
        self.context.ledger.release(model_id)

    # --- parking -------------------------------------------------------------------

    def park_size(self, model_id: str) -> int | None:
        served = self.models.get(model_id)
        if served is None or served.group is not None:  # tensor-parallel models are unloaded, not parked
            return None
        return served.weight_bytes

    async def park(self, model_id: str) -> None:
        served = self._served(model_id)
        engine = served.engine
        await off_loop(engine.stop)
        model = engine.runner.model
        del engine.runner  # the KV cache goes with the runner
        if served.shape.device.type == "cuda":
            await off_loop(to_pinned_host, model, served.shape.device)
        self.models.pop(model_id, None)
        self.parked[model_id] = Parked(model, served)
        self.context.ledger.release(model_id)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._share_cores()

    async def wake(self, model_id: str, devices: list[int], progress: LoadProgress) -> LoadedModel:
        parked = self.parked.get(model_id)
        if parked is None:
            raise ApiError(
                404, f"model {model_id!r} is not parked in the torch harness", code="model_not_found"
            )
        served, device = parked.served, self._device(devices)
        if device != served.shape.device:  # rotary tables and the like were built for that device
            raise ApiError(
                409, f"{model_id} was parked from {served.shape.device}, not {device}", code="wake_elsewhere"
            )
        self.context.ledger.reserve(model_id, dict(served.loaded.memory_mb))
        progress("waking: copying weights back", 0.1)
        model = parked.model

        def restore() -> CausalLM:  # on the engine's thread, like a load's materialize
            if device.type == "cuda":
                model._apply(lambda t: t.to(device, non_blocking=True))
                torch.cuda.synchronize(device)
            progress("allocating the KV cache", 0.9)
            return model

        try:
            engine = self._engine(model_id, restore, served.shape, served.threads)
            engine.deliver = deliver_on_their_loops
            await asyncio.wrap_future(engine.ready)
        except BaseException:
            self.context.ledger.release(model_id)
            raise
        engine.grammar = served.engine.grammar  # the grammar tokenizer outlives the engine
        served.engine = engine
        served.groups.clear()
        self.parked.pop(model_id, None)
        self.models[model_id] = served
        self._share_cores()
        return served.loaded

    def _served(self, model_id: str) -> Served:
        served = self.models.get(model_id)
        if served is None:
            raise ApiError(
                404, f"model {model_id!r} is not loaded in the torch harness", code="model_not_found"
            )
        return served

    async def tokenize(self, model_id: str, source: ChatPrompt | str) -> Prompt:
        served = self._served(model_id)
        if isinstance(source, str):
            return await off_loop(encode_text, served.tokenizer, source)
        if served.images is not None:
            return await off_loop(served.images.render, source)
        return await off_loop(render_chat, served.tokenizer, source)

    async def generate(self, model_id: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        served = self._served(model_id)
        outputs: asyncio.Queue[tuple[list[int], str | None, str | None]] = asyncio.Queue()

        def emit(tokens: list[int], finish: str | None, error: str | None) -> None:
            outputs.put_nowait((tokens, finish, error))  # on this loop (see deliver_on_their_loops)

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
        biased = [t for t in request.sampling.logit_bias if not 0 <= t < served.vocab_size]
        if biased:
            raise ApiError(
                400,
                f"logit_bias names token id {biased[0]}, outside this model's vocabulary "
                f"(0..{served.vocab_size - 1})",
                param="logit_bias",
            )
        seq = Sequence(
            id=request.request_id or secrets.token_hex(8),
            token_ids=list(prompt),
            sampling=request.sampling,
            emit=emit,
            loop=asyncio.get_running_loop(),
            media=request.prompt.media,
        )
        if request.constraint is not None:
            seq.matcher = await off_loop((await self._grammar(served)).matcher, request.constraint)
        if request.group is not None:
            head = served.groups.setdefault(request.group, seq)
            seq.after = head if head is not seq else None
        detokenizer = Detokenizer(served.tokenizer, prompt, served.hidden)
        texts = TokenTexts(served.tokenizer) if request.sampling.logprobs is not None else None
        eos = served.engine.eos_ids
        served.engine.submit(seq)
        finished, count = False, 0
        try:
            while not finished:
                tokens, finish, error = await outputs.get()
                if error is not None:
                    raise ApiError(500, f"generation failed: {error}", code="engine_error")
                finished = finish is not None
                visible = [t for t in tokens if not (finish == "stop" and t in eos)]
                text = detokenizer.add(visible, final=finished)
                count += len(tokens)
                yield Delta(
                    text=text,
                    token_ids=tokens,
                    finish_reason=finish,
                    prompt_tokens=len(prompt) if finished else None,
                    cached_tokens=seq.cached_prompt,
                    logprobs=texts.entries(seq.logprobs[count - len(tokens) : count]) if texts else None,
                )
        finally:
            if request.group is not None and served.groups.get(request.group) is seq:
                del served.groups[request.group]
            if not finished:
                served.engine.abort(seq)

    async def _grammar(self, served: Served) -> GrammarBook:
        """The model's grammar tokenizer, built on first use (about a second) and kept."""
        async with served.grammar_ready:
            if served.engine.grammar is None:
                served.engine.grammar = await off_loop(
                    GrammarBook, served.tokenizer, served.vocab_size, served.engine.eos_ids
                )
        return served.engine.grammar

    def memory(self) -> dict[str, dict[int, int]]:
        return {model_id: dict(served.loaded.memory_mb) for model_id, served in self.models.items()}

    async def close(self) -> None:
        for model_id in [*self.models, *self.parked]:
            await self.unload(model_id)


def to_pinned_host(model: torch.nn.Module, device: torch.device) -> None:
    """Move every parameter and buffer to page-locked host memory, from which the copy back is fast."""

    def pinned(t: torch.Tensor) -> torch.Tensor:
        host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    with torch.no_grad():
        model._apply(pinned)
    torch.cuda.synchronize(device)


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
