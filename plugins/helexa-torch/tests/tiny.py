"""Tiny random models built from transformers configs, and a synchronous way to drive the engine."""

from __future__ import annotations

import queue

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from helexa.neuron.harness import SamplingParams
from helexa.plugins import load_plugins
from helexa_torch.engine.engine import Engine
from helexa_torch.engine.sequence import Sequence

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CONFIGS = {
    "LlamaForCausalLM": lambda: LlamaConfig(
        **COMMON,
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    ),
    "MistralForCausalLM": lambda: MistralConfig(**COMMON, sliding_window=24, tie_word_embeddings=False),
    "Qwen2ForCausalLM": lambda: Qwen2Config(**COMMON, tie_word_embeddings=False),
    "Qwen3ForCausalLM": lambda: Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True),
}


def reference(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.architectures = [arch]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return model


def ours(hf_model, max_positions: int = 512):
    cls = load_plugins().architectures.get(hf_model.config.architectures[0])()
    model = cls(hf_model.config, torch.device("cpu"), max_positions).eval()
    model.load_weights(hf_model.state_dict().items())
    return model


def engine_for(
    hf_model, num_blocks: int = 256, block_size: int = 4, max_batched_tokens: int = 64, max_num_seqs: int = 16
) -> Engine:
    return Engine(
        "tiny",
        ours(hf_model),
        num_blocks=num_blocks,
        block_size=block_size,
        dtype=torch.float32,
        device=torch.device("cpu"),
        eos_ids=set(),
        max_model_len=512,
        max_num_seqs=max_num_seqs,
        max_batched_tokens=max_batched_tokens,
    )


def generate(engine: Engine, prompts: list[list[int]], **sampling) -> list[list[int]]:
    """Submit all prompts at once and wait for every sequence to finish; returns generated ids."""
    return [seq.output_ids for seq in run(engine, prompts, **sampling)]


def run(engine: Engine, prompts: list[list[int]], **sampling) -> list[Sequence]:
    """Like `generate`, returning the finished sequences."""
    sampling.setdefault("max_tokens", 32)
    sampling.setdefault("temperature", 0.0)
    done: queue.Queue[tuple[int, str | None]] = queue.Queue()
    seqs = []
    for i, prompt in enumerate(prompts):

        def emit(tokens, finish, error, i=i):
            if finish is not None or error is not None:
                done.put((i, error))

        seqs.append(
            Sequence(id=str(i), token_ids=list(prompt), sampling=SamplingParams(**sampling), emit=emit)
        )
    for seq in seqs:
        engine.submit(seq)
    for _ in seqs:
        _, error = done.get(timeout=60)
        assert error is None, error
    return seqs
