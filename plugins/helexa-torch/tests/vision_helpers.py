"""A tiny random Qwen3.5 vision-language checkpoint on disk: the language model, the vision tower,
the tokenizer with the image tokens and a chat template that places images, and the model's image
processor, saved to a folder as a user's model; and transformers' greedy answer for a prompt with images."""

from __future__ import annotations

import base64
import copy
import io
from pathlib import Path

import torch
from harness_helpers import tiny_tokenizer
from test_hybrid import SMALL

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'text' %}{{ p['text'] }}"
    "{% elif p['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH, MERGE = 16, 2


def vision_tokenizer():
    """The tiny tokenizer (a copy: the shared one stays as it is) with the Qwen image tokens."""
    tok = copy.deepcopy(tiny_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.chat_template = VL_TEMPLATE
    return tok


def vision_config(tok):
    from transformers import Qwen3_5Config

    ids = dict(zip(VISION_TOKENS, tok.convert_tokens_to_ids(VISION_TOKENS), strict=True))
    # Rotary over half of each 16-wide head: 4 frequencies, interleaved T H W T.
    rope = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
    rope["mrope_section"] = [2, 1, 1]
    text = dict(SMALL, rope_parameters=rope, vocab_size=len(tok), max_position_embeddings=512)
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=SMALL["hidden_size"],
        patch_size=PATCH,
        temporal_patch_size=2,
        spatial_merge_size=MERGE,
        num_position_embeddings=16,
        initializer_range=0.2,
    )
    return Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def save_vision_checkpoint(folder: Path, seed: int = 0):
    """Save the tiny vision model, tokenizer and image processor; returns (model, tokenizer, processor)."""
    from transformers import GenerationConfig, Qwen3_5ForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = vision_tokenizer()
    config = vision_config(tok)
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms and decays away from their neutral initial values
        for name, param in model.named_parameters():
            if "language_model" in name and ("norm" in name or "A_log" in name or "dt_bias" in name):
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    config.architectures = [type(model).__name__]
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH,
        temporal_patch_size=2,
        merge_size=MERGE,
        size={"shortest_edge": (PATCH * MERGE) ** 2, "longest_edge": 256 * 256},
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, tok, processor


def png(width: int, height: int, seed: int) -> bytes:
    """A noisy RGB picture as PNG bytes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def reference_greedy(
    model, tok, processor, messages: list[dict], images: list[bytes], max_new: int, **options
):
    """transformers' greedy tokens for chat ``messages`` (images as ``{"type": "image"}`` parts) with
    the processor's pixel values, the placeholders expanded as Qwen's processor does."""
    from PIL import Image

    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    processed = processor(images=pictures, return_tensors="pt")
    for grid in processed["image_grid_thw"]:
        text = text.replace("<|image_pad|>", "<|placeholder|>" * (int(grid.prod()) // MERGE**2), 1)
    text = text.replace("<|placeholder|>", "<|image_pad|>")
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=processed["pixel_values"],
            image_grid_thw=processed["image_grid_thw"],
            mm_token_type_ids=(ids == model.config.image_token_id).int(),
            max_new_tokens=max_new,
            do_sample=False,
            **options,
        )
    return out[0, ids.shape[1] :].tolist()
