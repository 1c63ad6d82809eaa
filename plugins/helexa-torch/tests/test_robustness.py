"""One request cannot hurt the others; min_tokens as transformers means it; the transformers
fallback serving what has no native module. All through a real neuron, as a client meets them."""

from __future__ import annotations

import asyncio
import threading

import httpx
import openai
import pytest
import torch
from harness_helpers import neuron_for, save_checkpoint
from transformers import LlamaConfig, LogitsProcessorList, MinNewTokensLengthLogitsProcessor, Olmo2Config

from helexa.neuron.app import create_app
from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa.testing import serve_app

SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.1,
)
POISON = 0.625
"""A temperature the poisoned sampler fails on: a failure inside the engine, reached through the API."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    hf = save_checkpoint(root / "llama", LlamaConfig(**SMALL))
    neuron = neuron_for(root)
    with serve_app(create_app(neuron)) as url:
        response = httpx.post(
            f"{url}/models/load",
            timeout=120,
            json={"model_id": "tiny/llama", "options": {"path": str(root / "llama"), "kv_cache_mb": 8}},
        )
        assert response.status_code == 200, response.text
        yield url, hf, neuron


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def long_answer(url: str, streaming: threading.Event | None = None) -> str:
    stream = client(url).chat.completions.create(
        model="tiny/llama",
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        max_tokens=300,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text = []
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            if streaming is not None:
                streaming.set()
    return "".join(text)


class Beside(threading.Thread):
    """A healthy streaming request, already generating when the constructor returns."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.text, self.error = url, None, None
        self.streaming = threading.Event()
        self.start()
        assert self.streaming.wait(120), "the healthy stream never started"

    def run(self) -> None:
        try:
            self.text = long_answer(self.url, self.streaming)
        except Exception as exc:  # reported by the assertion that reads it
            self.error = exc
            self.streaming.set()

    def result(self) -> str:
        self.join(120)
        assert self.error is None, self.error
        return self.text


def test_bad_values_are_refused_by_name_and_the_stream_beside_them_is_intact(served):
    url, hf, _ = served
    alone = long_answer(url)
    beside = Beside(url)
    sdk = client(url)
    with pytest.raises(openai.BadRequestError) as bad_token:
        sdk.completions.create(model="tiny/llama", prompt=[5, hf.config.vocab_size + 7], max_tokens=4)
    assert bad_token.value.body["param"] == "prompt"
    assert bad_token.value.body["code"] == "invalid_token_id"
    with pytest.raises(openai.BadRequestError) as huge_seed:
        sdk.completions.create(model="tiny/llama", prompt="Paris", max_tokens=4, seed=10**30)
    assert "seed" in huge_seed.value.message
    # top_k past the vocabulary is "no limit": honoured, not an error
    wide = sdk.completions.create(
        model="tiny/llama", prompt="Paris", max_tokens=4, temperature=0.9, extra_body={"top_k": 2**64}
    )
    assert wide.usage.completion_tokens == 4
    assert beside.result() == alone


def test_a_failure_inside_the_engine_ends_only_the_request_that_caused_it(served, monkeypatch):
    url, _, neuron = served
    alone = long_answer(url)
    engine = neuron.harnesses["torch"].models["tiny/llama"].engine
    sample = engine.sampler.sample
    batches = []

    def poisoned(logits, seqs, *rest):
        if any(s.sampling.temperature == POISON for s in seqs):
            batches.append(len(seqs))
            raise RuntimeError("injected sampling failure")
        return sample(logits, seqs, *rest)

    monkeypatch.setattr(engine.sampler, "sample", poisoned)
    beside = Beside(url)
    sdk = client(url)
    with pytest.raises(openai.APIError) as streamed:
        for _ in sdk.chat.completions.create(
            model="tiny/llama",
            messages=[{"role": "user", "content": "Paris?"}],
            max_tokens=50,
            temperature=POISON,
            stream=True,
        ):
            pass
    assert "injected sampling failure" in str(streamed.value.message)
    with pytest.raises(openai.InternalServerError) as whole:
        sdk.completions.create(model="tiny/llama", prompt="Paris", max_tokens=5, temperature=POISON)
    assert "injected sampling failure" in whole.value.message
    assert beside.result() == alone
    assert max(batches) > 1, "the poisoned request never shared a step with the healthy one"
    # the model keeps serving
    assert (
        sdk.completions.create(model="tiny/llama", prompt="Paris", max_tokens=3).usage.completion_tokens == 3
    )


def hf_min_tokens(hf, prompt: list[int], stop: list[int], min_tokens: int, n: int, ignore_eos: bool):
    keep_back = MinNewTokensLengthLogitsProcessor(len(prompt), min_tokens, stop)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            logits_processor=LogitsProcessorList([keep_back]),
            eos_token_id=None if ignore_eos else stop,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_greedy_is_what_transformers_generates(served, ignore_eos):
    _, hf, neuron = served
    harness = neuron.harnesses["torch"]
    prompt = [12, 40, 41, 97, 150, 33, 7]
    free = hf_min_tokens(hf, prompt, [], 0, 30, ignore_eos=True)
    stop = free[2]  # a token greedy picks early: stopping on it is what min_tokens must hold back
    early = free.index(stop) + 1
    stops = [stop, hf.config.eos_token_id]
    expected = hf_min_tokens(hf, prompt, stops, 10, 30, ignore_eos)

    async def ours() -> tuple[list[int], str]:
        request = GenerationRequest(
            request_id="min",
            prompt=Prompt(text="", token_ids=prompt),
            sampling=SamplingParams(
                max_tokens=30, temperature=0, min_tokens=10, stop_token_ids=[stop], ignore_eos=ignore_eos
            ),
        )
        tokens, finish = [], None
        async for delta in harness.generate("tiny/llama", request):
            tokens += delta.token_ids
            finish = delta.finish_reason or finish
        return tokens, finish

    tokens, finish = asyncio.run(ours())
    assert tokens == expected
    assert len(tokens) > early  # without min_tokens it would have stopped after `early` tokens
    assert finish == ("length" if ignore_eos or len(tokens) == 30 else "stop")


def test_min_tokens_through_the_api_with_other_requests_in_the_batch(served):
    url, _, _ = served
    sdk = client(url)

    def ask(i: int):
        return sdk.chat.completions.create(
            model="tiny/llama",
            messages=[{"role": "user", "content": f"Question {i}?"}],
            max_tokens=12,
            temperature=0.8,
            seed=i,
            extra_body={"min_tokens": 6, "ignore_eos": i % 2 == 0},
        )

    answers = []
    threads = [threading.Thread(target=lambda i=i: answers.append(ask(i))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 4
    assert all(a.usage.completion_tokens >= 6 for a in answers)


@pytest.mark.slow
def test_an_architecture_without_a_native_module_runs_through_the_fallback(tmp_path):
    config = Olmo2Config(**SMALL)
    hf = save_checkpoint(tmp_path / "olmo2", config)
    neuron = neuron_for(tmp_path)
    with serve_app(create_app(neuron)) as url:
        discovery = httpx.get(f"{url}/discovery").json()
        assert discovery["architectures"]["TransformersForCausalLM"] == "fallback"
        assert discovery["architectures"]["LlamaForCausalLM"] == "native"
        response = httpx.post(
            f"{url}/models/load",
            timeout=120,
            json={"model_id": "tiny/olmo2", "options": {"path": str(tmp_path / "olmo2"), "kv_cache_mb": 8}},
        )
        assert response.status_code == 200, response.text
        model = response.json()["model"]
        assert (model["architecture"], model["runtime"]) == ("Olmo2ForCausalLM", "fallback")

        prompts = [[12 + i, *range(40, 40 + 6 * i + 3)] for i in range(4)]
        with torch.no_grad():
            expected = [
                hf.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=None)[
                    0, len(p) :
                ].tolist()
                for p in prompts
            ]
        sdk = client(url)
        texts = [None] * 4

        def ask(i: int) -> None:
            texts[i] = (
                sdk.completions.create(
                    model="tiny/olmo2",
                    prompt=prompts[i],
                    max_tokens=16,
                    temperature=0,
                    extra_body={"ignore_eos": True},
                )
                .choices[0]
                .text
            )

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        tokenizer = neuron.harnesses["torch"].models["tiny/olmo2"].tokenizer
        assert texts == [tokenizer.decode(e, skip_special_tokens=True) for e in expected]
