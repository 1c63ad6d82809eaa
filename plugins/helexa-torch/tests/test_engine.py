"""Engine mechanics: the KV cache pool, cancellation, preemption, prefix hits, and the sampler."""

from __future__ import annotations

import queue
import time

import pytest
import torch
from tiny import engine_for, generate, reference, run

from helexa.neuron.harness import SamplingParams
from helexa_torch.engine.block_manager import BlockManager
from helexa_torch.engine.sampler import Sampler, filter_logits
from helexa_torch.engine.sequence import Sequence


@pytest.fixture(scope="module")
def hf():
    return reference("LlamaForCausalLM")


def seq(tokens, **sampling):
    sampling.setdefault("max_tokens", 8)
    return Sequence(id="s", token_ids=list(tokens), sampling=SamplingParams(**sampling), emit=lambda *a: None)


def test_blocks_return_to_the_pool_after_completion(hf):
    engine = engine_for(hf, num_blocks=64)
    try:
        generate(engine, [list(range(3, 20)), list(range(5, 9))], max_tokens=20)
        assert engine.blocks.free_blocks == 64
        assert not engine.scheduler.running
    finally:
        engine.stop()


def test_blocks_return_after_cancellation(hf):
    engine = engine_for(hf, num_blocks=64)
    try:
        started = queue.Queue()
        s = Sequence(
            id="c",
            token_ids=list(range(3, 30)),
            sampling=SamplingParams(max_tokens=400, temperature=0),
            emit=lambda tokens, finish, error: started.put(tokens),
        )
        engine.submit(s)
        started.get(timeout=30)
        assert engine.blocks.free_blocks < 64
        engine.abort(s)
        deadline = time.monotonic() + 5
        while engine.blocks.free_blocks != 64:
            assert time.monotonic() < deadline, "blocks were not returned after abort"
            time.sleep(0.01)
        assert s.status == "finished"
    finally:
        engine.stop()


def test_preemption_and_recompute_keep_outputs_identical(hf):
    prompts = [list(range(3 + i, 15 + i)) for i in range(6)]
    roomy = engine_for(hf, num_blocks=256)
    tight = engine_for(hf, num_blocks=40)  # 6 sequences of up to 44 tokens cannot all stay resident
    try:
        expected = generate(roomy, prompts, max_tokens=32)
        assert generate(tight, prompts, max_tokens=32) == expected
        assert tight.scheduler.preemptions > 0
        assert tight.blocks.free_blocks == 40
    finally:
        roomy.stop()
        tight.stop()


def test_a_prompt_is_reused_even_when_its_request_ended_after_one_token(hf):
    engine = engine_for(hf)
    try:
        prompt = list(range(3, 43))
        [first] = run(engine, [prompt], max_tokens=1)
        [second] = run(engine, [prompt], max_tokens=1)
        assert first.cached_prompt == 0
        assert second.cached_prompt == 36  # every full block but the last, which yields the logits
        assert second.output_ids == first.output_ids
    finally:
        engine.stop()


def test_prefix_blocks_are_found_by_chain_hash():
    blocks = BlockManager(num_blocks=8, block_size=4)
    first = seq(range(10))
    blocks.allocate(first)
    first.num_computed = 10
    blocks.register(first)
    blocks.release(first)
    again = seq([*range(8), 99, 98, 97])
    blocks.allocate(again)
    assert again.num_computed == 8  # two full blocks reused
    assert again.cached_prompt == 8
    other = seq([0, 1, 2, 4, 5, 6, 7, 8, 9])
    blocks.allocate(other)
    assert other.num_computed == 0  # different first block: nothing reused


def test_never_reuses_the_whole_prompt():
    blocks = BlockManager(num_blocks=8, block_size=4)
    first = seq(range(8))
    blocks.allocate(first)
    first.num_computed = 8
    blocks.register(first)
    blocks.release(first)
    same = seq(range(8))
    blocks.allocate(same)
    assert same.num_computed == 4  # the last block is recomputed so the last token yields logits


def test_a_budget_too_small_for_one_sequence_is_a_load_error(tmp_path):
    from harness_helpers import load_tiny

    from helexa.errors import ApiError

    with pytest.raises(ApiError, match=r"holds \d+ tokens, fewer than one sequence of max_model_len=256"):
        load_tiny(tmp_path, kv_cache_mb=0.001)


# --- sampler on crafted logits ----------------------------------------------------------


def sample_many(logits, n=400, **sampling):
    sampler = Sampler(torch.device("cpu"), set())
    sampler.default_generator.manual_seed(1234)  # statistical assertions, made repeatable
    s = seq([1], **sampling)
    picks = [sampler.sample(logits.clone()[None], [s])[0] for _ in range(n)]
    return {t: picks.count(t) / n for t in set(picks)}


LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


def test_greedy_at_temperature_zero():
    assert sample_many(LOGITS, n=20, temperature=0) == {0: 1.0}


def test_temperature_spreads_and_sharpens():
    hot = sample_many(LOGITS, temperature=5.0)
    cold = sample_many(LOGITS, temperature=0.2)
    assert hot.get(3, 0) > 0.1
    assert cold.get(0, 0) > 0.9


def test_top_k_top_p_min_p_cut_the_tail():
    assert set(sample_many(LOGITS, temperature=1, top_k=2)) <= {0, 1}
    assert set(sample_many(LOGITS, temperature=1, top_p=0.6)) == {0, 1}
    assert set(sample_many(LOGITS, temperature=1, min_p=0.4)) == {0, 1}
    assert set(sample_many(LOGITS, temperature=1, top_k=1)) == {0}


def test_top_p_keeps_the_token_that_crosses_the_line():
    out = filter_logits(LOGITS[None].clone(), torch.tensor([0]), torch.tensor([0.55]), torch.tensor([0.0]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]


def test_penalties():
    sampler = Sampler(torch.device("cpu"), set())
    logits = torch.tensor([[2.0, 1.9, 0.0, -1.0]])
    repeated = seq([0], temperature=0, repetition_penalty=2.0)
    assert sampler.sample(logits.clone(), [repeated]) == [1]  # 2.0 / 2 = 1.0 < 1.9
    with_output = seq([3, 0], temperature=0, presence_penalty=1.0)
    with_output.prompt_len = 1  # token 0 was generated
    assert sampler.sample(logits.clone(), [with_output]) == [1]
    frequent = seq([3, 1, 1, 1], temperature=0, frequency_penalty=0.5)
    frequent.prompt_len = 1
    assert sampler.sample(torch.tensor([[1.0, 2.0, 0.0, 0.0]]), [frequent]) == [0]  # 2.0 - 1.5 < 1.0


def test_min_tokens_holds_eos_back():
    sampler = Sampler(torch.device("cpu"), {0})
    s = seq([5], temperature=0, min_tokens=2)
    assert sampler.sample(torch.tensor([[9.0, 1.0, 0.0, 0.0]]), [s]) == [1]


def test_same_seed_same_text(hf):
    engine = engine_for(hf)
    try:
        ids = list(range(3, 12))
        a = generate(engine, [ids], temperature=1.0, seed=42, max_tokens=24)[0]
        b = generate(engine, [ids, list(range(40, 60))], temperature=1.0, seed=42, max_tokens=24)[0]
        c = generate(engine, [ids], temperature=1.0, seed=43, max_tokens=24)[0]
        assert a == b
        assert a != c
    finally:
        engine.stop()
