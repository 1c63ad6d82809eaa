"""Hybrid linear-attention models (Qwen3.5 dense and MoE, Qwen3-Next) as a user meets them: a tiny
random checkpoint saved to a folder and loaded through the harness, compared with transformers on
logits and on greedy tokens with several prompts at once, chunked prefill at a small budget,
prefix hits that restore recurrent states, preemption, and a state cache too small for everyone."""

from __future__ import annotations

import asyncio

import pytest
import torch
from harness_helpers import load_folder, make_harness, save_checkpoint
from test_architectures import generate_all, hf_greedy, prompt
from tiny import run
from transformers import Qwen3_5MoeTextConfig, Qwen3_5TextConfig, Qwen3NextConfig

from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa_torch.engine.engine import Engine
from helexa_torch.engine.hybrid_blocks import HybridBlockManager
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.engine.scheduler import Plan
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget
from helexa_torch.models.gated_deltanet import chunked_delta_rule, chunked_delta_rule_batch

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,  # three linear-attention layers, then full attention
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,  # two value heads per key head, as in the real models
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    max_position_embeddings=256,
    initializer_range=0.1,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
CASES = {
    "qwen3_5": lambda: Qwen3_5TextConfig(**SMALL),
    "qwen3_5_moe": lambda: Qwen3_5MoeTextConfig(**SMALL, **MOE),
    "qwen3_next": lambda: Qwen3NextConfig(**SMALL, **MOE, mlp_only_layers=[1]),  # one dense layer
}
PROMPT_LENGTHS = [5, 17, 29, 40]
OPTIONS = dict(kv_cache_mb=4, block_size=4, max_batched_tokens=16)  # prompts prefill in several chunks


def save_hybrid(folder, config):
    """A checkpoint whose norms and decay parameters are not at their neutral initial values."""
    hf = save_checkpoint(folder, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name or "A_log" in name or "dt_bias" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="module", params=list(CASES))
def loaded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    hf = save_hybrid(root / "model", CASES[request.param]())
    harness = make_harness(root)
    load_folder(harness, root / "model", model_id="tiny/model", **OPTIONS)
    yield hf, harness
    asyncio.run(harness.close())


def engine_of(harness) -> Engine:
    return harness.models["tiny/model"].engine


def test_chunked_prompt_logits_match_transformers(loaded):
    hf, harness = loaded
    ids = prompt(1, 70, hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    # Two prefill chunks: the second resumes from the staged states.
    logits = single_prompt_logits(engine_of(harness).runner.model, ids, chunks=(30, 40))
    # Relative to the logits' scale: splitting the chunked delta rule at another point reorders fp32 sums.
    scale = max(1.0, expected.abs().max().item())
    assert (logits - expected).abs().max().item() < 1e-4 * scale


def single_prompt_logits(model, ids: list[int], chunks: tuple[int, ...] | None = None) -> torch.Tensor:
    """Every position's logits for one prompt, prefilled in ``chunks`` on a runner of our own."""
    blocks = HybridBlockManager(32, 4, StateBudget(slots=1, snapshots=1))
    runner = ModelRunner(model, 32, 4, torch.float32, torch.device("cpu"), blocks)  # not the engine's
    seq = Sequence("p", list(ids), SamplingParams(max_tokens=1), emit=lambda *_: None)
    blocks.allocate(seq)
    logits = []
    for chunk in chunks or (len(ids),):
        plan = Plan(prefill=[(seq, chunk)])
        ids_t, positions, ctx, _, _ = runner.prepare(plan)
        with torch.inference_mode():
            logits.append(model.compute_logits(model(ids_t, positions, ctx, runner.caches)))
        runner.commit(plan)
        seq.num_computed += chunk
    return torch.cat(logits)


def test_concurrent_greedy_matches_generate(loaded):
    hf, harness = loaded
    prompts = [prompt(10 + i, n, hf.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS)]
    expected = [hf_greedy(hf, p, 24) for p in prompts]
    assert asyncio.run(generate_all(harness, prompts, 24)) == expected
    engine = engine_of(harness)
    assert engine.blocks.free_state_slots == engine.blocks.budget.slots  # every slot came back


async def _generate(harness, ids: list[int], n: int, request_id: str) -> tuple[list[int], int]:
    request = GenerationRequest(
        request_id=request_id,
        prompt=Prompt(text="", token_ids=ids),
        sampling=SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
    )
    tokens, cached = [], 0
    async for delta in harness.generate("tiny/model", request):
        tokens.extend(delta.token_ids)
        cached = delta.cached_tokens or 0
    return tokens, cached


def test_prefix_hit_restores_states_and_gives_the_same_tokens(loaded):
    hf, harness = loaded
    vocab = hf.config.vocab_size
    first = prompt(50, 42, vocab)
    tokens, cached = asyncio.run(_generate(harness, first, 8, "first"))
    assert cached == 0 and tokens == hf_greedy(hf, first, 8)
    # A longer prompt that shares the first one's prompt: it resumes at its last block boundary.
    second = first + prompt(51, 11, vocab)
    tokens, cached = asyncio.run(_generate(harness, second, 12, "second"))
    assert cached == 40
    assert tokens == hf_greedy(hf, second, 12)
    # The same prompt again hits too, and still decodes exactly as without the cache.
    tokens, cached = asyncio.run(_generate(harness, first, 8, "again"))
    assert cached == 40 and tokens == hf_greedy(hf, first, 8)


def test_abort_returns_the_state_slot(loaded):
    hf, harness = loaded
    engine = engine_of(harness)

    async def abandon() -> None:
        request = GenerationRequest(
            request_id="abandoned",
            prompt=Prompt(text="", token_ids=prompt(60, 20, hf.config.vocab_size)),
            sampling=SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True),
        )
        stream = harness.generate("tiny/model", request)
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(200):  # the abort reaches the engine thread through its queue
            if engine.blocks.free_state_slots == engine.blocks.budget.slots:
                return
            await asyncio.sleep(0.01)

    asyncio.run(abandon())
    assert engine.blocks.free_state_slots == engine.blocks.budget.slots
    assert not engine.blocks.slot_of


@pytest.fixture(scope="module")
def qwen3_5(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_5-engine")
    return save_hybrid(root / "model", CASES["qwen3_5"]())


def hybrid_engine(hf, num_blocks: int, budget: StateBudget, **limits) -> Engine:
    from tiny import ours

    return Engine(
        "tiny",
        ours(hf),
        num_blocks=num_blocks,
        block_size=4,
        dtype=torch.float32,
        device=torch.device("cpu"),
        eos_ids=set(),
        max_model_len=256,
        state_cache=budget,
        **limits,
    )


def test_too_few_state_slots_queue_instead_of_failing(qwen3_5, tmp_path):
    harness = make_harness(tmp_path)
    qwen3_5.save_pretrained(tmp_path / "model")
    from harness_helpers import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "model")
    load_folder(harness, tmp_path / "model", model_id="tiny/model", **OPTIONS, state_slots=1)
    try:
        prompts = [prompt(70 + i, n, qwen3_5.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS[:3])]
        expected = [hf_greedy(qwen3_5, p, 10) for p in prompts]
        assert asyncio.run(generate_all(harness, prompts, 10)) == expected
        engine = engine_of(harness)
        assert engine.blocks.budget.slots == 1 and engine.blocks.free_state_slots == 1
    finally:
        asyncio.run(harness.close())


def test_preemption_recomputes_states_and_keeps_outputs(qwen3_5):
    prompts = [prompt(80 + i, n, qwen3_5.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS)]
    expected = [hf_greedy(qwen3_5, p, 24) for p in prompts]
    engine = hybrid_engine(qwen3_5, 30, StateBudget(slots=4, snapshots=2), max_batched_tokens=16)
    try:
        engine.ready.result(timeout=60)
        seqs = run(engine, prompts, max_tokens=24, ignore_eos=True)
        assert [seq.output_ids for seq in seqs] == expected
        assert engine.scheduler.preemptions > 0
        assert engine.blocks.free_state_slots == 4
    finally:
        engine.stop()


def test_snapshot_interval_lets_a_shared_system_prompt_hit(qwen3_5):
    vocab = qwen3_5.config.vocab_size
    system = prompt(90, 26, vocab)
    first, second = system + prompt(91, 14, vocab), system + prompt(92, 9, vocab)
    engine = hybrid_engine(qwen3_5, 64, StateBudget(slots=2, snapshots=8, interval=8))
    try:
        engine.ready.result(timeout=60)
        [a] = run(engine, [first], max_tokens=6, ignore_eos=True)
        [b] = run(engine, [second], max_tokens=6, ignore_eos=True)
        assert b.cached_prompt == 24  # the last snapshot inside the shared 26 tokens
        assert a.output_ids == hf_greedy(qwen3_5, first, 6)
        assert b.output_ids == hf_greedy(qwen3_5, second, 6)
    finally:
        engine.stop()


def test_prompts_batched_through_the_delta_rule_come_out_as_one_at_a_time():
    # What one step of many prompts computes must not depend on which prompts it shares a batch with.
    g = torch.Generator().manual_seed(3)

    def piece(length: int) -> tuple[torch.Tensor, ...]:
        return (
            torch.randn(length, 2, 8, generator=g),  # q: two key heads
            torch.randn(length, 2, 8, generator=g),  # k
            torch.randn(length, 4, 8, generator=g),  # v: four value heads
            -torch.rand(length, 4, generator=g),  # g (log decay)
            torch.rand(length, 4, generator=g),  # beta
            torch.randn(4, 8, 8, generator=g) * 0.1,  # the state so far
        )

    pieces = [piece(n) for n in (5, 16, 9, 70, 128)]
    together = chunked_delta_rule_batch(pieces)
    for inputs, (out, state) in zip(pieces, together, strict=True):
        alone_out, alone_state = chunked_delta_rule(*inputs)
        assert out.shape == alone_out.shape
        assert (out - alone_out).abs().max().item() < 1e-5
        assert (state - alone_state).abs().max().item() < 1e-5
