"""Hybrid (Qwen3.5) decode throughput and prefix-hit TTFT: helexa's engine vs transformers `generate`.

A random Qwen3.5 text model is built from a config (no download). Decode tokens/s at 1 and
``--streams`` concurrent sequences, for our engine and for transformers' generate with its
reference PyTorch kernels: serving the streams one after another (what a server built on
``generate`` does) and, for reference, as one static batch; and the time to the first token of a long
prompt cold and again with a prefix hit (its recurrent states restored from a snapshot).
Prints one JSON object; the ratios are measured side by side in one run.

The script also times the linear layers' matmuls alone (every linear layer of the model, at
the batch's rows, with the engine's own kernels) and reports the ceiling they put on it:
``matmul_ceiling_tok_s_N`` and the ratio to sequential `generate` it would allow.

    .venv/bin/python benchmarks/hybrid_throughput.py --hidden 512 --layers 8 --tokens 32
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3_5TextConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins/helexa-torch/tests"))
from tiny import ours

from helexa.neuron.harness import SamplingParams
from helexa_torch.engine.engine import Engine
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget
from helexa_torch.models.packed import PackedLinear, can_pack


def model(hidden: int, layers: int):
    config = Qwen3_5TextConfig(
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=hidden // 8,
        linear_num_key_heads=4,
        linear_num_value_heads=8,
        linear_key_head_dim=hidden // 8,
        linear_value_head_dim=hidden // 8,
        max_position_embeddings=4096,
    )
    config.architectures = ["Qwen3_5ForCausalLM"]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def timed_run(engine: Engine, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """Seconds until every sequence finished, and until the first token of the first one."""
    done: queue.Queue[float] = queue.Queue()
    first: list[float] = []
    start = time.perf_counter()
    for i, ids in enumerate(prompts):

        def emit(new, finish, error, i=i):
            if i == 0 and not first:
                first.append(time.perf_counter() - start)
            if finish is not None or error is not None:
                done.put(time.perf_counter())

        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        engine.submit(Sequence(id=str(i), token_ids=list(ids), sampling=params, emit=emit))
    end = max(done.get(timeout=600) for _ in prompts)
    return end - start, first[0]


def hf_seconds(hf, prompts: list[list[int]], tokens: int) -> float:
    batch = torch.tensor(prompts)
    start = time.perf_counter()
    with torch.no_grad():
        hf.generate(batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - start


def matmul_ceiling(hf, streams: int, prompt: int, tokens: int) -> float:
    """Tokens/s if a run took only its linear layers' time, computed as the engine computes them
    (laid out for oneDNN on a CPU): one prefill of every prompt, then one ``streams``-row matmul
    per layer for each further token (weights read from memory each time)."""
    layers = [m for m in hf.modules() if isinstance(m, torch.nn.Linear)]
    if can_pack(torch.device("cpu")):
        layers = [PackedLinear.of(m) for m in layers]

    def seconds(rows: int) -> float:
        inputs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
        with torch.no_grad():
            for m in layers:  # warm-up
                m(inputs[m.in_features])
            start = time.perf_counter()
            for _ in range(3):
                for m in layers:
                    m(inputs[m.in_features])
        return (time.perf_counter() - start) / 3

    total = seconds(streams * prompt) + (tokens - 1) * seconds(streams)
    return streams * tokens / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--long", type=int, default=1024)
    args = parser.parse_args()
    hf = model(args.hidden, args.layers)
    engine = Engine(
        "bench",
        ours(hf, 4096),
        num_blocks=2048,
        block_size=16,
        dtype=torch.float32,
        device=torch.device("cpu"),
        eos_ids=set(),
        max_model_len=4096,
        max_num_seqs=args.streams,
        max_batched_tokens=512,
        state_cache=StateBudget(slots=args.streams, snapshots=4),
    )
    engine.ready.result(timeout=300)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 4096, (args.prompt,), generator=g).tolist() for _ in range(args.streams)]
    timed_run(engine, prompts[:1], 4)  # warm-up
    result: dict[str, object] = {"params": sum(p.numel() for p in hf.parameters()), **vars(args)}
    for streams in (1, args.streams):
        ours_s, _ = timed_run(engine, prompts[:streams], args.tokens)
        sequential = sum(hf_seconds(hf, [ids], args.tokens) for ids in prompts[:streams])
        result[f"helexa_tok_s_{streams}"] = round(streams * args.tokens / ours_s, 1)
        result[f"transformers_sequential_tok_s_{streams}"] = round(streams * args.tokens / sequential, 1)
        result[f"ratio_{streams}_vs_sequential"] = round(sequential / ours_s, 2)
        if streams > 1:
            batch = hf_seconds(hf, prompts[:streams], args.tokens)
            result[f"transformers_static_batch_tok_s_{streams}"] = round(streams * args.tokens / batch, 1)
            result[f"ratio_{streams}_vs_static_batch"] = round(batch / ours_s, 2)
            ceiling = matmul_ceiling(hf, streams, args.prompt, args.tokens)
            result[f"matmul_ceiling_tok_s_{streams}"] = round(ceiling, 1)
            result[f"ceiling_ratio_{streams}_vs_sequential"] = round(
                ceiling * sequential / (streams * args.tokens), 2
            )
    long = torch.randint(10, 4096, (args.long,), generator=g).tolist()
    _, cold = timed_run(engine, [long], 1)
    _, hit = timed_run(engine, [long], 1)
    result.update(
        ttft_cold_s=round(cold, 4), ttft_prefix_hit_s=round(hit, 4), prefix_speedup=round(cold / hit, 1)
    )
    engine.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
