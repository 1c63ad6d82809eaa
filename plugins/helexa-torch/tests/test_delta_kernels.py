"""Device kernels for Gated DeltaNet are used only after they prove equal to the PyTorch reference.

flash-linear-attention and causal-conv1d need a GPU; transformers' PyTorch fallbacks keep their
exact calling conventions, so on a CPU they stand in for the libraries: the adapters are
exercised for real, and a kernel with another convention is caught and not served.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from functools import partial

import pytest
import torch
from harness_helpers import load_folder, make_harness
from test_architectures import generate_all, hf_greedy, prompt
from test_hybrid import CASES, OPTIONS, PROMPT_LENGTHS, save_hybrid
from transformers.models.qwen3_5 import modeling_qwen3_5 as reference

from helexa_torch.models import delta_kernels
from helexa_torch.models.delta_kernels import REFERENCE, choose, conv1d_update, fla_chunked, fla_recurrent
from helexa_torch.models.gated_deltanet import GatedDeltaNet


def stand_ins() -> dict:
    """The adapters around transformers' fallbacks, which take the libraries' arguments."""
    return {
        "chunk (transformers)": ("chunked", partial(fla_chunked, reference.torch_chunk_gated_delta_rule)),
        "recurrent (transformers)": (
            "recurrent",
            partial(fla_recurrent, reference.torch_recurrent_gated_delta_rule),
        ),
        "conv update (transformers)": ("conv", partial(conv1d_update, reference.causal_conv1d_update)),
    }


def layer(device="cpu", dtype=torch.float32) -> GatedDeltaNet:
    torch.manual_seed(0)
    return GatedDeltaNet(CASES["qwen3_5"](), 0).to(device, dtype)


def test_kernels_with_the_libraries_conventions_are_proven_equal_and_taken():
    kernels = choose(layer(), torch.device("cpu"), torch.float32, stand_ins())
    assert kernels.names == tuple(stand_ins())
    assert kernels.chunked is not REFERENCE.chunked and kernels.recurrent is not REFERENCE.recurrent


def test_a_kernel_that_disagrees_or_fails_is_left_out(caplog):
    def no_l2norm(*args, **kwargs):  # a library that would not normalise q and k for us
        kwargs["use_qk_l2norm_in_kernel"] = False
        return reference.torch_recurrent_gated_delta_rule(*args, **kwargs)

    def broken(*args, **kwargs):
        raise TypeError("unexpected keyword argument 'use_qk_l2norm_in_kernel'")

    found = {
        "wrong": ("recurrent", partial(fla_recurrent, no_l2norm)),
        "broken": ("chunked", partial(fla_chunked, broken)),
        "gelu conv": ("conv", partial(conv1d_update, reference.causal_conv1d_update)),
    }
    gelu = layer()
    gelu.act = torch.nn.functional.gelu  # causal-conv1d fuses silu only
    with caplog.at_level(logging.WARNING, logger="helexa.torch.engine"):
        kernels = choose(gelu, torch.device("cpu"), torch.float32, found)
    assert kernels == REFERENCE
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "wrong differs from the PyTorch reference" in messages
    assert "broken failed" in messages and "gelu conv failed" in messages


def test_nothing_is_looked_for_on_a_cpu():
    assert delta_kernels.installed(torch.device("cpu")) == {}


def test_a_hybrid_served_with_the_kernels_answers_as_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(delta_kernels, "installed", lambda device: stand_ins())
    hf = save_hybrid(tmp_path / "model", CASES["qwen3_5"]())
    harness = make_harness(tmp_path)
    try:
        load_folder(harness, tmp_path / "model", model_id="tiny/model", **OPTIONS)
        model = harness.models["tiny/model"].engine.runner.model
        assert all(layer.kernels.names == tuple(stand_ins()) for layer in model.linear_layers)
        prompts = [prompt(10 + i, n, hf.config.vocab_size) for i, n in enumerate(PROMPT_LENGTHS)]
        expected = [hf_greedy(hf, p, 16) for p in prompts]
        assert asyncio.run(generate_all(harness, prompts, 16)) == expected
    finally:
        asyncio.run(harness.close())


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("fla") is None,
    reason="flash-linear-attention runs on a GPU",
)
def test_flash_linear_attention_is_taken_on_a_gpu():
    kernels = choose(layer("cuda", torch.bfloat16), torch.device("cuda"), torch.bfloat16)
    assert {"fla chunk_gated_delta_rule", "fla fused_recurrent_gated_delta_rule"} <= set(kernels.names)
