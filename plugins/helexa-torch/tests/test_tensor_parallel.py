"""Tensor parallelism on the CPU, as an operator meets it: checkpoints saved to a folder, loaded through a
real neuron with ``tensor_parallel = 2`` (two gloo ranks, one a worker process), compared with
transformers on greedy tokens and with the same model on one rank on log-probabilities; hybrid
linear-attention models likewise, with chunked prefill and a prefix hit that restores recurrent
states on every rank; a worker killed under a stream; an unload that stops every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import openai
import pytest
from harness_helpers import neuron_for, save_checkpoint
from test_architectures import hf_greedy, prompt
from test_hybrid import CASES as HYBRIDS
from test_hybrid import OPTIONS as HYBRID_OPTIONS
from test_hybrid import SMALL as HYBRID
from test_hybrid import save_hybrid
from transformers import LlamaConfig, Qwen3_5TextConfig, Qwen3Config, Qwen3MoeConfig
from vision_helpers import save_vision_checkpoint

from helexa.neuron.app import create_app
from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa.testing import serve_app

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,
)
CASES = {
    "llama3": lambda: LlamaConfig(
        **SMALL,
        attention_bias=True,  # o_proj's bias must be added once, not once per rank
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen3": lambda: Qwen3Config(**{**SMALL, "num_key_value_heads": 1}, head_dim=16),  # KV head replicated
    "qwen3-moe": lambda: Qwen3MoeConfig(
        **SMALL,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        mlp_only_layers=[0],  # one dense layer, one sparse
    ),
}
PROMPT_LENGTHS = [5, 17, 29, 40]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    neuron = neuron_for(root)
    with serve_app(create_app(neuron)) as url:
        yield url, root, neuron
        asyncio.run(neuron.manager.unload_all(30))  # no worker outlives the module


def load(url: str, model_id: str, folder, tensor_parallel: int, **options):
    return httpx.post(
        f"{url}/models/load",
        timeout=180,
        json={
            "model_id": model_id,
            "tensor_parallel": tensor_parallel,
            # Room for a stream long enough to be cut (the configs say 256 positions).
            "options": {"path": str(folder), "kv_cache_mb": 4, "max_model_len": 4096, **options},
        },
    )


def status(url: str, model_id: str) -> dict:
    return next(m for m in httpx.get(f"{url}/models").json() if m["id"] == model_id)


def workers(neuron, model_id: str) -> list[int]:
    return neuron.harnesses["torch"].models[model_id].group.pids


async def generate_all(harness, model_id: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    async def one(i: int, ids: list[int]) -> list[int]:
        request = GenerationRequest(
            request_id=f"r{i}",
            prompt=Prompt(text="", token_ids=ids),
            sampling=SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
        )
        tokens = []
        async for delta in harness.generate(model_id, request):
            tokens.extend(delta.token_ids)
        return tokens

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))


async def generate_one(harness, model_id: str, ids: list[int], n: int) -> tuple[list[int], int]:
    """Greedy tokens of one prompt, and how many of its tokens came from the prefix cache."""
    request = GenerationRequest(
        request_id=f"one-{len(ids)}",
        prompt=Prompt(text="", token_ids=ids),
        sampling=SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
    )
    tokens, cached = [], 0
    async for delta in harness.generate(model_id, request):
        tokens.extend(delta.token_ids)
        cached = delta.cached_tokens or cached
    return tokens, cached


def top_logprobs(url: str, model_id: str, ids: list[int]) -> list[dict[str, float]]:
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    answer = sdk.completions.create(
        model=model_id, prompt=ids, max_tokens=6, temperature=0, logprobs=5, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].logprobs.top_logprobs


@pytest.fixture(scope="module")
def models(neuron):
    """Each architecture saved once and loaded on two ranks and on one, as it is first asked for."""
    url, root, _ = neuron
    made: dict[str, object] = {}

    def get(case: str):
        if case not in made:
            if case in HYBRIDS:  # small blocks and chunks: prompts prefill in pieces, prefixes hit
                hf, options = save_hybrid(root / case, HYBRIDS[case]()), HYBRID_OPTIONS
            else:
                hf, options = save_checkpoint(root / case, CASES[case]()), {}
            for ranks in (2, 1):
                response = load(url, f"{case}/tp{ranks}", root / case, ranks, **options)
                assert response.status_code == 200, response.text
            made[case] = hf
        return made[case]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", [*CASES, *HYBRIDS])
def test_two_ranks_generate_what_transformers_generates(neuron, models, case):
    url, _, node = neuron
    hf = models(case)
    info = status(url, f"{case}/tp2")
    assert info["status"] == "loaded" and info["devices"] == [0]
    assert len(workers(node, f"{case}/tp2")) == 1  # rank 0 is the neuron itself
    prompts = [prompt(i, n, hf.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS)]
    expected = [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    harness = node.harnesses["torch"]
    assert asyncio.run(generate_all(harness, f"{case}/tp2", prompts, NEW_TOKENS)) == expected
    if case in HYBRIDS:
        # Every state slot came back on rank 0, whose block manager the workers follow.
        two, one = (harness.models[f"{case}/tp{n}"].engine for n in (2, 1))
        assert two.blocks.free_state_slots == two.blocks.budget.slots
        # Each rank holds the states of its own value heads only: half of them.
        assert two.runner.states.recurrent[0].shape[1] * 2 == one.runner.states.recurrent[0].shape[1]
        assert asyncio.run(generate_all(harness, f"{case}/tp1", prompts, NEW_TOKENS)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HYBRIDS))
def test_a_prefix_hit_restores_the_states_of_every_rank(neuron, models, case):
    _, _, node = neuron
    hf = models(case)
    harness, vocab = node.harnesses["torch"], hf.config.vocab_size
    first = prompt(50, 42, vocab)
    second = first + prompt(51, 11, vocab)  # resumes at the first prompt's last block boundary
    for model_id in (f"{case}/tp2", f"{case}/tp1"):
        tokens, cached = asyncio.run(generate_one(harness, model_id, first, 4))
        assert cached == 0 and tokens == hf_greedy(hf, first, 4)
        tokens, cached = asyncio.run(generate_one(harness, model_id, second, NEW_TOKENS))
        assert cached == 40, model_id
        assert tokens == hf_greedy(hf, second, NEW_TOKENS), model_id


@pytest.mark.slow
@pytest.mark.parametrize("case", [*CASES, *HYBRIDS])
def test_two_ranks_give_the_log_probabilities_of_one(neuron, models, case):
    url, _, _ = neuron
    hf = models(case)
    ids = prompt(7, 23, hf.config.vocab_size)
    two, one = top_logprobs(url, f"{case}/tp2", ids), top_logprobs(url, f"{case}/tp1", ids)
    assert_same_logprobs(two, one)


def assert_same_logprobs(two: list[dict[str, float]], one: list[dict[str, float]]) -> None:
    """Two ranks offer the same top tokens at every step as one, with log-probabilities within 1e-4."""
    assert [list(step) for step in two] == [list(step) for step in one]
    worst = max(abs(a[t] - b[t]) for a, b in zip(two, one, strict=True) for t in a)
    assert worst < 1e-4, worst


def test_a_split_the_model_cannot_take_is_refused_by_name(neuron):
    url, root, _ = neuron
    save_checkpoint(root / "three", LlamaConfig(**SMALL))
    response = load(url, "three/tp3", root / "three", 3)  # 4 attention heads do not split 3 ways
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "tensor_parallel" and "4 attention heads" in error["message"]
    # One linear-attention key head (with its two value heads) cannot be shared by two ranks.
    save_checkpoint(root / "hybrid", Qwen3_5TextConfig(**{**HYBRID, "linear_num_key_heads": 1}))
    response = load(url, "hybrid/tp2", root / "hybrid", 2)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "tensor_parallel" and error["code"] == "tensor_parallel_unsupported"
    assert "1 linear-attention key heads" in error["message"]
    assert status(url, "hybrid/tp2")["status"] == "failed"
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.slow
def test_a_vision_model_split_in_two_answers_images_as_one_rank_does(neuron):
    # Rank 0 runs the vision tower; the worker gets the image embeddings with each step.
    from test_vision import PICTURES, expected_text, messages

    url, root, node = neuron
    vl = save_vision_checkpoint(root / "vl")
    for ranks in (1, 2):
        response = load(url, f"vl/tp{ranks}", root / "vl", ranks, block_size=4, max_batched_tokens=16)
        assert response.status_code == 200, response.text
    assert len(workers(node, "vl/tp2")) == 1
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)

    def ask(model: str, image: bytes):
        answer = client.chat.completions.create(
            model=model,
            messages=messages(image, openai_style=True),
            max_tokens=8,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
        )
        steps = answer.choices[0].logprobs.content
        return answer.choices[0].message.content, [
            {t.token: t.logprob for t in s.top_logprobs} for s in steps
        ]

    for name, image in PICTURES.items():
        (text, two), (_, one) = ask("vl/tp2", image), ask("vl/tp1", image)
        assert text == expected_text(vl, image, 8), name
        assert_same_logprobs(two, one)


@pytest.mark.slow
def test_unloading_stops_every_worker(neuron, models):
    url, _, node = neuron
    models("qwen3")
    pids = workers(node, "qwen3/tp2")
    response = httpx.post(f"{url}/models/unload", json={"model_id": "qwen3/tp2"}, timeout=60)
    assert response.status_code == 200, response.text
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_worker_that_dies_ends_the_streams_in_protocol_and_fails_the_model(neuron, models):
    url, _, node = neuron
    models("llama3")
    [pid] = workers(node, "llama3/tp2")
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    outcome: dict[str, object] = {}
    started = threading.Event()

    def stream() -> None:
        chunks = sdk.chat.completions.create(
            model="llama3/tp2",
            messages=[{"role": "user", "content": "Tell me about Paris."}],
            max_tokens=4000,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        try:
            for _ in chunks:
                started.set()
            outcome["ended"] = "without an error"
        except openai.APIError as exc:  # the stream's own error event
            outcome["ended"] = exc
        finally:
            started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    reader.join(15)
    assert not reader.is_alive()
    assert isinstance(outcome["ended"], openai.APIError), outcome
    assert "rank 1" in str(outcome["ended"])
    while (info := status(url, "llama3/tp2"))["status"] != "failed":
        assert time.monotonic() - killed < 5, info
        time.sleep(0.1)
    assert "rank 1" in info["error"]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="llama3/tp2", messages=[{"role": "user", "content": "Hi"}])
    # The model on one rank beside it never noticed.
    answer = sdk.chat.completions.create(
        model="llama3/tp1", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content is not None
