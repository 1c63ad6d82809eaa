"""The step loop of one loaded model, on a thread of its own.

The asyncio side submits sequences and aborts through a queue; the engine thread
runs schedule -> forward -> sample steps while there is work, and hands the new
tokens of each step to the harness in one hop back to the event loop (`Engine.deliver`).
HTTP, tokenization and detokenization therefore never stall a step.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future

import torch

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.constraints import GrammarBook, MaskWorker
from helexa_torch.engine.hybrid_blocks import HybridBlockManager
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.engine.sampler import Sampler
from helexa_torch.engine.scheduler import Plan, Scheduler
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget
from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.sizing import available_cores

log = logging.getLogger("helexa.torch.engine")
Output = tuple[Sequence, list[int], str | None, str | None]
"""(sequence, new tokens, finish reason, error)."""


def deliver_each(outputs: list[Output]) -> None:
    for seq, tokens, finish, error in outputs:
        seq.emit(tokens, finish, error)


class Engine:
    def __init__(
        self,
        name: str,
        model: CausalLM | Callable[[], CausalLM],
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        eos_ids: set[int],
        max_model_len: int,
        max_num_seqs: int = 64,
        max_batched_tokens: int = 512,
        threads: int | None = None,
        state_cache: StateBudget | None = None,
        runner: Callable[..., ModelRunner] = ModelRunner,
    ) -> None:
        self.name = name
        self.device = device
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        # Hybrid models also hold a recurrent-state slot per running sequence (see hybrid_blocks).
        self.blocks = (
            HybridBlockManager(num_blocks, block_size, state_cache)
            if state_cache
            else BlockManager(num_blocks, block_size)
        )
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_batched_tokens)
        self.sampler = Sampler(device, eos_ids)
        self.grammar: GrammarBook | None = None
        """Set by the harness before it submits the model's first constrained sequence."""
        self.masks = MaskWorker()
        self.inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.steps = 0
        self.broken: str | None = None
        """Why the model can no longer run (a tensor-parallel rank died); every sequence then fails."""
        self.make_runner = runner
        self.threads = threads or available_cores()
        """CPU threads for this engine's ops; the harness rebalances it as models come and go."""
        self.deliver: Callable[[list[Output]], None] = deliver_each
        """How a step's outputs leave the engine thread (the harness hops to its event loop once)."""
        self.ready: Future[None] = Future()
        """Done when the model is built and the cache allocated (or failed to be)."""
        self.thread = threading.Thread(
            target=self._main,
            args=(model, num_blocks, block_size, dtype),
            name=f"engine:{name}",
            daemon=True,
        )
        self.thread.start()

    def _main(self, model, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        # All torch work of this model happens on this thread, building included. On CPU
        # that keeps one OpenMP pool busy; a second pool (from loading on another thread)
        # would make libgomp throttle its spinning and every small op would pay a wake-up.
        # OpenMP's thread count is per calling thread, so each engine keeps its own share.
        self._threads_set = self.threads
        torch.set_num_threads(self.threads)
        try:
            built = model() if callable(model) and not isinstance(model, CausalLM) else model
            self.runner = self.make_runner(built, num_blocks, block_size, dtype, self.device, self.blocks)
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        self._loop()

    # --- called from other threads ---------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        if seq.sampling.seed is not None:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(seq.sampling.seed)
        self.inbox.put(("add", seq))
        self.wake.set()

    def abort(self, seq: Sequence) -> None:
        self.inbox.put(("abort", seq))
        self.wake.set()

    def fail(self, reason: str) -> None:
        """Fail every sequence with ``reason`` and refuse new ones: the model cannot run any more."""
        self.inbox.put(("fail", reason))
        self.wake.set()

    def close(self) -> None:
        """Ask the engine thread to end (after the model it is building, if any); returns at once."""
        self.inbox.put(("stop", None))
        self.wake.set()

    def stop(self) -> None:
        self.close()
        self.thread.join(timeout=30)
        self.masks.close()

    # --- the engine thread ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self._drain():
                return
            if self.threads != self._threads_set:
                self._threads_set = self.threads
                torch.set_num_threads(self.threads)
            if not self.scheduler.has_work():
                self.wake.wait()
                self.wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # fail what was running, keep the engine alive for the next requests
                log.error("engine step for %s failed: %s\n%s", self.name, exc, traceback.format_exc())
                if getattr(exc, "fatal", False):
                    self.broken = str(exc)
                self._fail_all(f"{type(exc).__name__}: {exc}")

    def _fail_all(self, message: str) -> None:
        failed = [*self.scheduler.running, *self.scheduler.waiting]
        for seq in failed:
            self.scheduler.finish(seq)
        if failed:
            self.deliver([(seq, [], "error", message) for seq in failed])

    def _drain(self) -> bool:
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return True
            if kind == "stop":
                self._fail_all("the model was unloaded")
                return False
            if kind == "fail":
                self.broken = self.broken or str(item)
                self._fail_all(self.broken)
                continue
            assert isinstance(item, Sequence)
            if kind == "add" and self.broken:
                self.deliver([(item, [], "error", self.broken)])
            elif kind == "add":
                self.scheduler.add(item)
            elif item.status != "finished":  # abort: its blocks return to the pool now
                self.scheduler.finish(item)

    def step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan:
            # Nothing running and the first waiting sequence does not fit even in an empty cache.
            seq = self.scheduler.waiting[0]
            self.scheduler.finish(seq)
            self.deliver([(seq, [], "error", "the sequence does not fit in the KV cache")])
            return
        self.steps += 1
        outputs: list[Output] = []
        self._run_isolated(plan, outputs)
        if outputs:
            self.deliver(outputs)

    def _run_isolated(self, plan: Plan, outputs: list[Output]) -> None:
        """Run a step; if it fails, run its halves apart so only the sequences that cause it fail.

        Nothing of the scheduler's state changes before a forward and its sampling succeed
        (a retried forward rewrites the same cache slots), so a half can be run again safely.
        """
        try:
            tokens, sampled = self._forward(plan)
        except Exception as exc:
            if getattr(exc, "fatal", False):  # not caused by a request: nothing to isolate
                raise
            if plan.size > 1:
                for half in plan.halves():
                    self._run_isolated(half, outputs)
                return
            [seq] = plan.sequences()
            log.error(
                "engine step for %s failed for request %s: %s\n%s",
                self.name,
                seq.id,
                exc,
                traceback.format_exc(),
            )
            self.scheduler.finish(seq)
            outputs.append((seq, [], "error", f"{type(exc).__name__}: {exc}"))
            return
        self._commit(plan, sampled, tokens, outputs)

    @torch.inference_mode()
    def _forward(self, plan: Plan) -> tuple[list[int], list[Sequence]]:
        masks = self.masks.start(self.grammar, plan.sampled())  # computed while the model runs
        logits, sampled = self.runner.run(plan)
        tokens = self.sampler.sample(logits, sampled, masks) if sampled else []
        return tokens, sampled

    def _commit(self, plan: Plan, sampled: list[Sequence], tokens: list[int], outputs: list[Output]) -> None:
        self.runner.commit(plan)
        for seq, chunk in plan.prefill:
            seq.num_computed += chunk
            self.blocks.register(seq)  # before a finish releases them: cached blocks outlive their sequence
        for seq in plan.decode:
            seq.num_computed += 1
            self.blocks.register(seq)
        for seq, token in zip(sampled, tokens, strict=True):
            seq.token_ids.append(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                self.scheduler.finish(seq)
            outputs.append((seq, [token], reason, None))

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        s = seq.sampling
        if (
            not s.ignore_eos
            and seq.generated > s.min_tokens - 1
            and (token in self.eos_ids or token in s.stop_token_ids)
        ):
            return "stop"
        if seq.generated >= s.max_tokens or len(seq.token_ids) >= self.max_model_len:
            return "length"
        return None
