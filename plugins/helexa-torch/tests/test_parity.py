"""Our architectures against transformers on tiny random models: logits, greedy text, batching, prefixes."""

from __future__ import annotations

import pytest
import torch
from tiny import CONFIGS, engine_for, generate, ours, reference, run

from helexa_torch.models.context import PrefillSegment, StepContext

ARCHES = list(CONFIGS)


def prompt(seed: int, length: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 320, (length,), generator=g).tolist()


def hf_greedy(hf, ids: list[int], n: int = 32) -> list[int]:
    out = hf.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module", params=ARCHES)
def pair(request):
    hf = reference(request.param)
    engine = engine_for(hf)
    yield hf, engine
    engine.stop()


@pytest.mark.parametrize("arch", ARCHES)
def test_prompt_logits_match_transformers(arch):
    hf = reference(arch)
    model = ours(hf)
    ids = torch.tensor(prompt(1, 37))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    from helexa_torch.engine.runner import ModelRunner

    runner = ModelRunner(model, num_blocks=16, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    ctx = StepContext(
        slot_mapping=torch.arange(37),
        prefills=[PrefillSegment(start=0, length=37, cached=0, block_table=torch.arange(10))],
    )
    with torch.inference_mode():
        got = model.compute_logits(model(ids, torch.arange(37), ctx, runner.caches))
    assert (got - expected).abs().max().item() < 1e-4


def test_greedy_continuation_matches_generate(pair):
    hf, engine = pair
    ids = prompt(2, 11)
    assert generate(engine, [ids])[0] == hf_greedy(hf, ids)


def test_batching_does_not_change_results(pair):
    hf, engine = pair
    prompts = [prompt(10 + i, length) for i, length in enumerate([3, 17, 8, 30, 1, 12, 25, 6])]
    expected = [hf_greedy(hf, p) for p in prompts]
    assert generate(engine, prompts) == expected


def test_chunked_prefill_matches(pair):
    hf, _ = pair
    engine = engine_for(hf, max_batched_tokens=5)  # a 40-token prompt takes eight steps
    try:
        ids = prompt(3, 40)
        assert generate(engine, [ids])[0] == hf_greedy(hf, ids)
    finally:
        engine.stop()


def test_prefix_reuse_gives_the_same_output_as_a_cold_run(pair):
    hf, engine = pair
    system = prompt(4, 24)
    first, second = system + prompt(5, 5), system + prompt(6, 7)
    cold = generate(engine, [first])[0]
    [warm] = run(engine, [second])
    assert warm.cached_prompt == 24  # six full blocks of the shared system prompt
    assert warm.output_ids == hf_greedy(hf, second)
    assert cold == hf_greedy(hf, first)
