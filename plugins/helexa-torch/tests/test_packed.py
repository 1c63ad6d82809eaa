"""Linear layers laid out for oneDNN on the CPU compute what ``nn.Linear`` does; a served model uses them."""

from __future__ import annotations

import asyncio

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from harness_helpers import load_folder, make_harness, save_checkpoint
from test_architectures import generate_all, hf_greedy, prompt
from tiny import CONFIGS, engine_for, generate, reference
from torch import nn

from helexa_torch.models.packed import PackedLinear, packable


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_layer_computes_what_linear_does(dtype, bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias, dtype=dtype)
    packed = PackedLinear.of(linear)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        for shape in [(1, 96), (16, 96), (300, 96), (3, 5, 96)]:
            x = torch.randn(shape, dtype=dtype)
            expected = F.linear(x.double(), linear.weight.double(), linear.bias.double() if bias else None)
            got = packed(x)
            assert got.shape == (*shape[:-1], 200) and got.dtype == dtype
            assert (got.double() - expected).abs().max() < tolerance
        strided = torch.randn(16, 192, dtype=dtype)[:, ::2]  # a slice of a fused projection's output
        assert torch.allclose(packed(strided).float(), linear(strided).float(), atol=tolerance)


def test_quantized_layers_are_not_packed():
    assert packable(nn.Linear(8, 8))
    assert not packable(bnb.nn.Linear8bitLt(8, 8, has_fp16_weights=False))
    assert not packable(nn.Linear(8, 8, dtype=torch.float16))


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_a_model_served_on_the_cpu_runs_packed_layers_and_answers_as_transformers(arch):
    hf = reference(arch)
    engine = engine_for(hf)
    try:
        engine.ready.result(timeout=60)
        model = engine.runner.model
        layer = model.model.layers[0]
        assert isinstance(layer.self_attn.qkv_proj, PackedLinear)
        assert isinstance(layer.mlp.down_proj, PackedLinear)
        # An untied head is packed; a tied one gets a packed copy, and lookups read the embedding.
        head = model.packed_head if model.tied else model.lm_head
        assert isinstance(head, PackedLinear) and head.out_features == hf.config.vocab_size
        assert type(model.model.embed_tokens.weight) is nn.Parameter
        assert not any(type(m) is nn.Linear for m in model.model.layers.modules())
        prompts = [[5, 17, 42, 9], [3, 8, 100, 250, 11, 70, 4]]
        got = generate(engine, prompts, max_tokens=12)
    finally:
        engine.stop()
    assert got == [hf_greedy(hf, p, 12) for p in prompts]


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_a_checkpoint_loaded_on_the_cpu_is_packed_as_it_streams_in_and_its_memory_counted(tmp_path, arch):
    config = CONFIGS[arch]()
    config.architectures = [arch]
    hf = save_checkpoint(tmp_path / "model", config)
    harness = make_harness(tmp_path)
    try:
        load_folder(harness, tmp_path / "model", model_id="tiny/model", kv_cache_mb=4)
        served = harness.models["tiny/model"]
        model = served.engine.runner.model
        assert not any(type(m) is nn.Linear for m in model.model.layers.modules())
        # The weights as planned, plus a tied head's packed copy, are what the model reports taking.
        params = sum(p.numel() * p.element_size() for p in hf.parameters())
        head = hf.config.vocab_size * hf.config.hidden_size * 4 if model.tied else 0
        assert served.measured["weights"] == served.weight_bytes == params + head
        prompts = [prompt(3, 9, hf.config.vocab_size), prompt(4, 21, hf.config.vocab_size)]
        assert asyncio.run(generate_all(harness, prompts, 12)) == [hf_greedy(hf, p, 12) for p in prompts]
    finally:
        asyncio.run(harness.close())
