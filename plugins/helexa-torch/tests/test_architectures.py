"""Every native architecture and rotary scaling, as a user meets them: a checkpoint saved to a folder,
loaded through the harness's load path, compared with transformers on logits and on greedy text
for several prompts running at once."""

from __future__ import annotations

import asyncio

import pytest
import torch
from harness_helpers import load_folder, make_harness, save_checkpoint
from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MixtralConfig,
    Phi3Config,
    Qwen3MoeConfig,
)

from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.models.context import PrefillSegment, StepContext

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,
)
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.05 * i for i in range(8)],
    "long_factor": [1.5 + 0.2 * i for i in range(8)],
    "original_max_position_embeddings": 128,
}
CASES = {
    "qwen3-moe": lambda: Qwen3MoeConfig(
        **SMALL,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        mlp_only_layers=[0],  # one dense layer, one sparse
    ),
    "mixtral": lambda: MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
    "gemma2": lambda: Gemma2Config(
        **SMALL,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=12,
        attn_logit_softcapping=20.0,
        final_logit_softcapping=10.0,
    ),
    "gemma3": lambda: Gemma3TextConfig(
        **SMALL,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=12,  # shorter than prompt + output
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500_000.0},
        },
    ),
    "phi3": lambda: Phi3Config(**SMALL, tie_word_embeddings=False),
    "phi3-longrope": lambda: Phi3Config(**SMALL, rope_scaling=LONGROPE),
    "llama-default": lambda: LlamaConfig(**SMALL),
    "llama-linear": lambda: LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama-dynamic": lambda: LlamaConfig(**SMALL, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "llama-yarn": lambda: LlamaConfig(
        **SMALL,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama-llama3": lambda: LlamaConfig(
        **SMALL,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "llama-longrope": lambda: LlamaConfig(**SMALL, rope_scaling=LONGROPE),
}
PROMPT_LENGTHS = [5, 17, 29, 40]


def prompt(seed: int, length: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (length,), generator=g).tolist()


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


async def generate_all(harness, prompts: list[list[int]], n: int) -> list[list[int]]:
    async def one(i: int, ids: list[int]) -> list[int]:
        request = GenerationRequest(
            request_id=f"r{i}",
            prompt=Prompt(text="", token_ids=ids),
            sampling=SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
        )
        tokens = []
        async for delta in harness.generate("tiny/model", request):
            tokens.extend(delta.token_ids)
        return tokens

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = save_checkpoint(root / "model", CASES[request.param]())
    harness = make_harness(root)
    load_folder(harness, root / "model", model_id="tiny/model", kv_cache_mb=4, block_size=4)
    yield hf, harness
    asyncio.run(harness.close())


def test_prompt_logits_match_transformers(loaded):
    hf, harness = loaded
    ids = prompt(1, 37, hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    model = harness.models["tiny/model"].engine.runner.model
    caches = ModelRunner(model, 16, 4, torch.float32, torch.device("cpu")).caches  # not the engine's
    ctx = StepContext(
        slot_mapping=torch.arange(37),
        prefills=[PrefillSegment(start=0, length=37, cached=0, block_table=torch.arange(10))],
    )
    with torch.inference_mode():
        got = model.compute_logits(model(torch.tensor(ids), torch.arange(37), ctx, caches))
    assert (got - expected).abs().max().item() < 1e-4


def test_concurrent_greedy_matches_generate(loaded):
    hf, harness = loaded
    prompts = [prompt(10 + i, n, hf.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS)]
    expected = [hf_greedy(hf, p, 24) for p in prompts]
    assert asyncio.run(generate_all(harness, prompts, 24)) == expected
