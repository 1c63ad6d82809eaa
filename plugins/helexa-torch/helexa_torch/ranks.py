"""Tensor parallelism: one model run by N ranks joined by torch.distributed (NCCL on GPUs, gloo on CPUs).

Rank 0 is the model's engine thread in the neuron's own process; ranks 1..N-1 are worker
processes (spawned, one per device). Rank 0 stays in the neuron because everything that
runs once per step already lives there: the scheduler, the block manager, the sampler, the
grammar masks and the detokenizer. A one-rank model is therefore exactly the engine it was,
and a tensor-parallel one only adds what the other ranks need: before each forward rank 0
sends the step's inputs as plain data (`engine.runner.Step`) down a pipe to every worker,
then all ranks run the same forward on their shard (see `sharding`), summing partial
outputs with one all-reduce after attention and one after the MLP. Only rank 0 computes
logits. Each rank keeps its own paged KV cache for its KV heads; the block tables are
rank 0's, so the caches stay in step. A hybrid model's ranks also keep the recurrent states of
their own heads in slots that rank 0's block manager assigns: rank 0 journals every write it
makes to its slots (zeroed for a new sequence, copied from a prefix snapshot, a step's states
committed with the snapshots kept) and sends the journal with the next step, and each worker
replays it before that step's forward, so every rank's slots hold the same sequences' states.

A worker that dies (or fails) closes its end of the process group, so the collective rank 0
is in fails at once, and a watcher thread notices a dead worker while the model is idle:
either way the model's engine fails its streams with an in-protocol error and refuses new
ones, and the harness stops the other ranks and reports the model failed. A worker whose
neuron dies sees its pipe close and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from helexa_torch import quant as quantize
from helexa_torch import sharding
from helexa_torch.engine.runner import ModelRunner, Step
from helexa_torch.engine.scheduler import Plan
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget
from helexa_torch.models.causal_lm import CausalLM
from helexa_torch.models.packed import can_pack

log = logging.getLogger("helexa.torch.ranks")
LOAD_TIMEOUT_S = 3600.0
"""How long rank 0 waits for the other ranks to load their shards."""


class RankLost(RuntimeError):
    """The process group broke (a rank died or a collective failed): the model cannot serve any more."""

    fatal = True
    """Tells the engine not to retry the step in halves: no request caused it."""


@dataclass(frozen=True)
class RankSpec:
    """What every rank needs to build and serve its shard; picklable, sent to each worker."""

    model_id: str
    architecture: type[CausalLM]
    config: Any
    path: str
    gguf_quant: str | None
    """The GGUF file's quant (what `open_checkpoint` is given), None for safetensors."""
    quantization: quantize.Quantization | None
    dtype: torch.dtype
    max_len: int
    num_blocks: int
    block_size: int
    devices: tuple[str, ...]
    """The torch device of each rank (``cpu`` for every rank of a CPU model)."""
    threads: int
    """CPU threads of each rank."""
    store_port: int
    timeout_s: float
    states: StateBudget | None = None
    """Hybrid models: the state cache's slots and snapshots, as rank 0 has them."""

    @property
    def size(self) -> int:
        return len(self.devices)


def build_shard(spec_config: Any, architecture: type[CausalLM], shard: sharding.ShardPlan, device, max_len):
    """Rank ``shard.rank``'s model on the meta device (shapes only), refused if it cannot be split."""
    with torch.device("meta"):
        model = architecture(shard.config(spec_config), device, max_len)
    sharding.check_layers(model, getattr(model, "architecture_name", architecture.__name__))
    return model


def load_shard(
    model: CausalLM,
    weights,
    shard: sharding.ShardPlan,
    device: torch.device,
    quantization: quantize.Quantization | None,
) -> CausalLM:
    """Give the (meta) shard storage on ``device`` and stream its slices of the checkpoint in."""
    built = model.materialize(device)
    stream = sharding.shard_weights(built, weights, shard)
    if quantization is not None:
        quantize.load_quantized(built, stream, quantization, device)
    else:
        built.load_weights(stream, pack=can_pack(device))
    return built.eval()


def connect(spec: RankSpec, rank: int, store: Any = None) -> Any:
    """Join the model's process group as ``rank`` (NCCL on a GPU, gloo on the CPU)."""
    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(
            "127.0.0.1",
            spec.store_port,
            spec.size,
            is_master=False,
            timeout=timedelta(seconds=spec.timeout_s),
        )
    prefixed = dist.PrefixStore(f"helexa-tp/{spec.model_id}", store)
    timeout = timedelta(seconds=spec.timeout_s)
    if spec.devices[rank].startswith("cuda"):
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, spec.size, options)
    return dist.ProcessGroupGloo(prefixed, rank, spec.size, timeout)


def reducer(group: Any) -> Callable[[torch.Tensor], None]:
    def all_reduce(tensor: torch.Tensor) -> None:
        group.allreduce([tensor]).wait()

    return all_reduce


def worker_main(spec: RankSpec, rank: int, conn: Connection) -> None:
    """A worker rank: build and load its shard, join the group, then run each step rank 0 sends."""
    try:
        from helexa_torch.loading import open_checkpoint

        torch.set_num_threads(spec.threads)
        device = torch.device(spec.devices[rank])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        shard = sharding.plan(spec.config, rank, spec.size)
        model = build_shard(spec.config, spec.architecture, shard, device, spec.max_len).to(spec.dtype)
        if getattr(model, "vision", False):
            model.drop_tower()  # rank 0 runs it and sends the embeddings with each step
        if spec.quantization is not None:
            quantize.defer_linears(model)
        checkpoint = open_checkpoint(Path(spec.path), spec.gguf_quant)
        model = load_shard(model, checkpoint.weights(lambda *_: None), shard, device, spec.quantization)
        model.drop_head()  # logits are only computed on rank 0
        conn.send(("loaded", quantize.resident_bytes(model)))
        attach = connect(spec, rank)
        sharding.attach_reducers(model, reducer(attach))
        runner = ModelRunner(model, spec.num_blocks, spec.block_size, spec.dtype, device, states=spec.states)
    except BaseException as exc:
        traceback.print_exc()
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    with torch.inference_mode():
        while True:
            try:
                step = conn.recv()
            except EOFError:  # the neuron is gone
                return
            if step is None:  # unloaded
                return
            if runner.states is not None:  # first what rank 0 did to its slots, then this step
                runner.states.replay(step.state_ops, runner.pending)
            ids, positions, ctx = runner.build(step)
            try:
                model(ids, positions, ctx, runner.caches)
            except BaseException:
                print(f"helexa tensor-parallel rank {rank} of {spec.model_id} failed:", file=sys.stderr)
                traceback.print_exc()
                sys.exit(1)  # closes this rank's connections: rank 0's collective fails at once


class RankGroup:
    """Rank 0's view of the other ranks: their processes, their pipes and the process group."""

    def __init__(self, spec_for: Callable[[int], RankSpec]) -> None:
        import torch.distributed as dist

        self.store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        self.spec = spec_for(self.store.port)
        self.group: Any = None
        self.closing = False
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.lock = threading.Lock()
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        self.conns: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for rank in range(1, self.spec.size):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(self.spec, rank, theirs),
                name=f"helexa-tp-{rank}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def wait_loaded(self) -> list[int]:
        """Each worker's resident weight bytes once loaded; raises with a worker's error or death."""
        sizes: dict[int, int] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            sentinels = {self.processes[i].sentinel: i for i in pending}
            ready = wait([*pending.values(), *sentinels], timeout=LOAD_TIMEOUT_S)
            if not ready:
                raise RuntimeError("tensor-parallel ranks did not load their shards in time")
            for item in ready:
                if item in sentinels and sentinels[item] in pending:
                    index = sentinels[item]
                    if self.conns[index].poll():  # its last word explains the exit
                        continue
                    raise RuntimeError(
                        f"tensor-parallel rank {index + 1} exited while loading "
                        f"(exit code {self.processes[index].exitcode})"
                    )
            for index, conn in list(pending.items()):
                if conn.poll():
                    kind, value = conn.recv()
                    if kind == "error":
                        raise RuntimeError(f"tensor-parallel rank {index + 1} failed to load: {value}")
                    sizes[index] = value
                    del pending[index]
        return [sizes[i] for i in range(len(self.conns))]

    def join(self) -> None:
        """Join the process group as rank 0 (once every worker has loaded)."""
        self.group = connect(self.spec, 0, self.store)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.group.allreduce([tensor]).wait()

    def send(self, step: Step) -> None:
        try:
            for conn in self.conns:
                conn.send(step)
        except OSError as exc:
            raise RankLost(f"a tensor-parallel rank of {self.spec.model_id} is gone ({exc})") from exc

    def exited(self, rank: int) -> str:
        code = self.processes[rank - 1].exitcode
        return f"tensor-parallel rank {rank} of {self.spec.model_id} exited (exit code {code})"

    def diagnose(self, exc: BaseException) -> str:
        """Why a collective failed, in an operator's words: a rank that exited, when one did."""
        for _ in range(20):  # a killed rank's connections close a moment before its exit is seen
            for rank, process in enumerate(self.processes, start=1):
                if process.exitcode is not None:
                    return self.exited(rank)
            time.sleep(0.05)
        return f"the tensor-parallel forward of {self.spec.model_id} failed: {exc}"

    def report(self, reason: str) -> None:
        """The group is broken: say so once (to the callback given to `watch`), whoever notices first."""
        with self.lock:
            if self.lost is not None or self.closing:
                return
            self.lost = reason
        if self.on_lost is not None:
            self.on_lost(reason)

    def watch(self, lost: Callable[[str], None]) -> None:
        """Call ``lost(reason)`` once when the group breaks: a worker exits while the model is served
        (seen by a watcher thread) or a collective fails (seen by rank 0's runner)."""
        self.on_lost = lost

        def run() -> None:
            by_sentinel = {p.sentinel: rank for rank, p in enumerate(self.processes, start=1)}
            ready = wait(list(by_sentinel))
            if self.closing:
                return
            rank = by_sentinel[ready[0]]
            self.processes[rank - 1].join(timeout=1)  # reaped, so its exit code is known
            self.report(self.exited(rank))

        threading.Thread(target=run, name=f"tp-watch:{self.spec.model_id}", daemon=True).start()

    def close(self) -> None:
        """Stop every worker: ask, then terminate, then kill whatever is left."""
        self.closing = True
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=2)
            if process.is_alive():
                process.kill()
                process.join(timeout=2)
        for conn in self.conns:
            conn.close()


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: sends each step to the other ranks before running its own share of it."""

    def __init__(self, *args, group: RankGroup, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        if self.states is not None:
            self.states.journal = []

    @torch.inference_mode()
    def run(self, plan: Plan) -> tuple[torch.Tensor | None, list[Sequence]]:
        if self.group.lost:
            raise RankLost(self.group.lost)
        step, sampled = self.describe(plan)
        if self.states is not None:
            step.state_ops, self.states.journal = self.states.journal, []
        if step.media is not None:  # the tower ran here alone; the workers get its output
            step.media = step.media.to("cpu")
        self.group.send(step)
        ids, positions, ctx = self.build(step)
        try:
            hidden = self.model(ids, positions, ctx, self.caches)
        except Exception as exc:
            # Whatever failed here, the ranks are out of step now: none of them can go on.
            reason = self.group.diagnose(exc)
            self.group.report(reason)
            raise RankLost(reason) from exc
        if not step.rows:
            return None, []
        return self.model.compute_logits(hidden[self._tensor(step.rows)]), sampled
