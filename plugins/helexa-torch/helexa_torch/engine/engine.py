"""The step loop of one loaded model, on a thread of its own.

The asyncio side submits sequences and aborts through a queue; the engine thread
runs schedule -> forward -> sample steps while there is work, and hands each new
token to the sequence's ``emit`` callback (which crosses back to the event loop).
HTTP, tokenization and detokenization therefore never stall a step.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback

import torch

from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.engine.sampler import Sampler
from helexa_torch.engine.scheduler import Scheduler
from helexa_torch.engine.sequence import Sequence
from helexa_torch.models.layers import CausalLM

log = logging.getLogger("helexa.torch.engine")


class Engine:
    def __init__(
        self,
        name: str,
        model: CausalLM,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        eos_ids: set[int],
        max_model_len: int,
        max_num_seqs: int = 64,
        max_batched_tokens: int = 512,
    ) -> None:
        self.name = name
        self.device = device
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self.blocks = BlockManager(num_blocks, block_size)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, block_size, dtype, device)
        self.sampler = Sampler(device, eos_ids)
        self.inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name=f"engine:{name}", daemon=True)
        self.thread.start()

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

    def stop(self) -> None:
        self.inbox.put(("stop", None))
        self.wake.set()
        self.thread.join(timeout=30)

    # --- the engine thread ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self._drain():
                return
            if not self.scheduler.has_work():
                self.wake.wait()
                self.wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # fail what was running, keep the engine alive for the next requests
                log.error("engine step for %s failed: %s\n%s", self.name, exc, traceback.format_exc())
                for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                    self.scheduler.finish(seq)
                    seq.emit([], "error", f"{type(exc).__name__}: {exc}")

    def _drain(self) -> bool:
        while True:
            try:
                kind, item = self.inbox.get_nowait()
            except queue.Empty:
                return True
            if kind == "stop":
                for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                    self.scheduler.finish(seq)
                    seq.emit([], "error", "the model was unloaded")
                return False
            assert isinstance(item, Sequence)
            if kind == "add":
                self.scheduler.add(item)
            elif item.status != "finished":  # abort: its blocks return to the pool now
                self.scheduler.finish(item)

    def step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan:
            # Nothing running and the first waiting sequence does not fit even in an empty cache.
            seq = self.scheduler.waiting[0]
            self.scheduler.finish(seq)
            seq.emit([], "error", "the sequence does not fit in the KV cache")
            return
        logits, sampled = self.runner.run(plan)
        self.steps += 1
        for seq, chunk in plan.prefill:
            seq.num_computed += chunk
        for seq in plan.decode:
            seq.num_computed += 1
        tokens = self.sampler.sample(logits, sampled) if sampled else []
        for seq, token in zip(sampled, tokens, strict=True):
            seq.token_ids.append(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                self.scheduler.finish(seq)
            else:
                self.blocks.register(seq)
            seq.emit([token], reason, None)
        for seq, _ in plan.prefill:
            if seq.status == "running":
                self.blocks.register(seq)

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
