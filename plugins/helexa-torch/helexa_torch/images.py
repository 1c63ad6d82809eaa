"""Chat prompts with images, for vision models: decode the images, preprocess them with the model's
own image processor, and expand each image's placeholder to one token per embedding.

Images come as ``data:`` URLs in OpenAI ``image_url`` parts (the gateway turns Anthropic's base64
``image`` blocks into those). Remote URLs are refused: a neuron does not fetch what a client
names. The chat template writes one placeholder per image (``<|vision_start|><|image_pad|>
<|vision_end|>`` for the Qwen family); the processor's grid says how many tokens the image
becomes (``t * h * w / merge**2``), as transformers' processor for these models expands it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from helexa.errors import ApiError
from helexa.neuron.harness import ChatPrompt, Prompt
from helexa_torch.engine.media import Media
from helexa_torch.models.vision import prompt_positions
from helexa_torch.text import render_chat

log = logging.getLogger("helexa.torch")

MAX_IMAGES = 32
"""Images one request may carry; more is refused rather than run through the tower."""


class ImagePrompts:
    """A vision model's way from chat messages with images to a prompt the engine can run."""

    def __init__(self, processor: Any, tokenizer: Any, image_token_id: int, merge: int) -> None:
        self.processor = processor
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(image_token_id)
        self.merge = merge

    @classmethod
    def for_model(cls, model: Any, folder: str, tokenizer: Any) -> ImagePrompts | None:
        """The model's image processor from its folder, or None (served as text) if it has none."""
        if not getattr(model, "vision", False):
            return None
        from transformers import AutoImageProcessor

        if not (Path(folder) / "preprocessor_config.json").exists():
            log.warning("%s: a vision tower but no preprocessor_config.json; served for text only", folder)
            return None
        processor = AutoImageProcessor.from_pretrained(folder)
        return cls(processor, tokenizer, model.image_token_id, model.merge)

    def render(self, chat: ChatPrompt) -> Prompt:
        """Render and tokenize ``chat``; with images, preprocess them and attach them as ``media``."""
        found = image_urls(chat.messages)
        rendered = render_chat(self.tokenizer, chat)
        if not found:
            return rendered
        if len(found) > MAX_IMAGES:
            raise ApiError(
                400, f"{len(found)} images in one request; at most {MAX_IMAGES} are allowed", param="messages"
            )
        pieces = rendered.text.split(self.image_token)
        if len(pieces) - 1 != len(found):
            raise ApiError(
                400,
                f"the model's chat template placed {len(pieces) - 1} images, the messages hold {len(found)}",
                code="template_render_failed",
                param="messages",
            )
        images, keys = zip(*(decode_image(url, where) for where, url in found), strict=True)
        try:
            processed = self.processor(images=list(images), return_tensors="pt")
        except Exception as exc:  # a decodable but unusable image (too small, odd mode)
            raise ApiError(400, f"an image could not be preprocessed: {exc}", param="messages") from None
        grids = processed["image_grid_thw"]
        counts = [int(g.prod()) // self.merge**2 for g in grids]
        expanded = (self.image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True))
        text = pieces[0] + "".join(expanded)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        spans = placeholder_spans(ids, self.image_token_id)
        if [end - start for start, end in spans] != counts:
            raise ApiError(400, "image placeholders in the text do not match the images", param="messages")
        positions, delta = prompt_positions(len(ids), spans, [tuple(map(int, g)) for g in grids], self.merge)
        media = Media(
            pixel_values=processed["pixel_values"],
            grids=grids.to(torch.long),
            spans=[(start, end, key) for (start, end), key in zip(spans, keys, strict=True)],
            positions=positions,
            delta=delta,
        )
        return Prompt(text=text, token_ids=ids, messages=chat.messages, media=media)


def image_urls(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, url) of every image part, in the order the template will place them."""
    found = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                continue
            if kind != "image_url":  # audio, video, files: never dropped silently
                raise ApiError(
                    400,
                    f"messages[{i}].content[{j}] is {kind!r} content; this model reads text and images",
                    param=f"messages[{i}].content[{j}]",
                    code="content_unsupported",
                )
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            found.append((f"messages[{i}].content[{j}].image_url", url or ""))
    return found


def decode_image(url: str, where: str) -> tuple[Any, int]:
    """A ``data:`` URL's image, and a key for it (negative: it stands for the image in prefix hashes)."""
    from PIL import Image, UnidentifiedImageError

    if not url.startswith("data:"):
        raise ApiError(
            400,
            f"{where}: only images inline as base64 data: URLs are accepted; remote URLs are not fetched",
            param=where,
            code="image_url_unsupported",
        )
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise ApiError(400, f"{where}: a data: URL image must be base64-encoded", param=where)
    try:
        data = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        message = f"{where}: not a readable image ({exc})"
        raise ApiError(400, message, param=where, code="invalid_image") from None
    key = -1 - int.from_bytes(hashlib.sha256(data).digest()[:7], "big")
    return image.convert("RGB"), key


def placeholder_spans(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, end) of each run of ``token`` in ``ids``."""
    spans, start = [], None
    for index, value in enumerate(ids):
        if value == token and start is None:
            start = index
        elif value != token and start is not None:
            spans.append((start, index))
            start = None
    if start is not None:
        spans.append((start, len(ids)))
    return spans
