"""helexa-torch's plugin entry module: registers the torch harness and its architectures.

Nothing heavy is imported here; each factory imports what it builds when it is called.
Each architecture is registered under its Hugging Face class name and under the model
types a config names when it lists no architecture (a GGUF file's config).
"""

from __future__ import annotations

from helexa import hookimpl


def _harness(context):
    from helexa_torch.harness import TorchHarness

    return TorchHarness(context)


def _architecture(module: str, name: str):
    def factory():
        import importlib

        return getattr(importlib.import_module(f"helexa_torch.models.{module}"), name)

    return factory


# Hugging Face architecture -> (module in helexa_torch.models, model types that mean it)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", ("llama",)),
    "MistralForCausalLM": ("llama", ("mistral",)),
    "Qwen2ForCausalLM": ("qwen2", ("qwen2",)),
    "Qwen3ForCausalLM": ("qwen3", ("qwen3",)),
    "Qwen3MoeForCausalLM": ("qwen3", ("qwen3_moe",)),
    "MixtralForCausalLM": ("mixtral", ("mixtral",)),
    "Gemma2ForCausalLM": ("gemma", ("gemma2",)),
    "Gemma3ForCausalLM": ("gemma", ("gemma3_text",)),
    "Phi3ForCausalLM": ("phi3", ("phi3",)),
    "Qwen3_5ForCausalLM": ("qwen3_5", ("qwen3_5_text",)),
    "Qwen3_5MoeForCausalLM": ("qwen3_5", ("qwen3_5_moe_text",)),
    "Qwen3_5ForConditionalGeneration": ("qwen3_5", ("qwen3_5",)),
    "Qwen3_5MoeForConditionalGeneration": ("qwen3_5", ("qwen3_5_moe",)),
    "Qwen3NextForCausalLM": ("qwen3_next", ("qwen3_next",)),
}
FALLBACK = "TransformersForCausalLM"
"""Serves any other causal LM that transformers can build, on our paged cache (see models/fallback.py)."""


@hookimpl
def register_harnesses(register):
    register("torch", _harness)


@hookimpl
def register_architectures(register):
    for name, (module, model_types) in ARCHITECTURES.items():
        factory = _architecture(module, name)
        register(name, factory)
        for model_type in model_types:
            register(model_type, factory)
    fallback = _architecture("fallback", FALLBACK)
    fallback.runtime = "fallback"  # shown by `helexa plugins` and /discovery
    register(FALLBACK, fallback)
