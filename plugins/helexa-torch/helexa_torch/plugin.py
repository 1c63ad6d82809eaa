"""helexa-torch's plugin entry module: registers the torch harness and its architectures.

Nothing heavy is imported here; each factory imports what it builds when it is called.
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


ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@hookimpl
def register_harnesses(register):
    register("torch", _harness)


@hookimpl
def register_architectures(register):
    for name, module in ARCHITECTURES.items():
        register(name, _architecture(module, name))
