"""A tiny real checkpoint on disk (trained tokenizer, random Llama), and the torch harness around it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from helexa.neuron.harness import HarnessContext, MemoryLedger
from helexa.plugins import load_plugins
from helexa.wire.fleet import DeviceInfo, ModelSpec

CORPUS = [
    "The capital of France is Paris.",
    "Paris is a city in France.",
    "The weather is nice today.",
    "What is the capital of Italy? Rome is the capital.",
    "Hello, how are you? I am fine, thank you.",
    "Numbers: one two three four five six seven eight nine ten.",
    "Grüße aus München — ça va? 東京",
] * 20
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_TOKENIZER = None


def tiny_tokenizer():
    """A small byte-level BPE trained on a few sentences (once per process), with a chat template.

    Byte-level BPE is what transformers 5 can load whatever tokenizer class a model type
    forces (qwen2, phi3, gemma ...), so one tokenizer serves every architecture's checkpoint.
    """
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast

        tk = Tokenizer(models.BPE(unk_token="<|unk|>"))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIALS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tk.train_from_iterator(CORPUS, trainer=trainer)
        _TOKENIZER = PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token="<|bos|>",
            eos_token="<|im_end|>",
            unk_token="<|unk|>",
            pad_token="<|pad|>",
        )
        _TOKENIZER.chat_template = TEMPLATE
    return _TOKENIZER


def save_checkpoint(folder: Path, config, seed: int = 0, dtype: torch.dtype | None = None):
    """A random model of ``config``'s architecture saved with the tiny tokenizer, as a user's model folder.

    Returns the transformers model (the reference) with the weights that were saved.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = tiny_tokenizer()
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype).eval()
    config.architectures = [type(model).__name__]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def save_tiny(folder: Path) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    save_checkpoint(folder, config)
    return folder


def neuron_for(root: Path):
    """A neuron serving from ``root`` with the torch harness (start it with `helexa.testing.serve_app`)."""
    import msgspec

    from helexa.neuron.app import Neuron
    from helexa.settings import NeuronSettings

    section = {"default_harness": "torch", "model_roots": [str(root)], "listen": "127.0.0.1:0"}
    return Neuron(msgspec.convert({"neuron": section}, NeuronSettings))


def make_harness(root: Path):
    devices = [DeviceInfo(index=0, name="cpu", vram_total_mb=8000, kind="cpu")]
    plugins = load_plugins()
    context = HarnessContext(
        name="torch",
        options={},
        devices=devices,
        ledger=MemoryLedger(devices),
        model_roots=[root],
        plugins=plugins,
    )
    return plugins.harnesses.get("torch")(context)


def load_folder(harness, folder: Path, model_id: str = "tiny/llama", **options):
    spec = ModelSpec(model_id=model_id, options={"path": str(folder), **options})
    return asyncio.run(harness.load(spec, [0], lambda *_: None))


def load_tiny(root: Path, **options):
    folder = save_tiny(root / "tiny")
    harness = make_harness(root)
    load_folder(harness, folder, **options)
    return harness
