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


def save_tiny(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
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
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        unk_token="<|unk|>",
        pad_token="<|pad|>",
    )
    tok.chat_template = TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


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


def load_tiny(root: Path, **options):
    folder = save_tiny(root / "tiny")
    harness = make_harness(root)
    spec = ModelSpec(model_id="tiny/llama", options={"path": str(folder), **options})
    asyncio.run(harness.load(spec, [0], lambda *_: None))
    return harness
