"""Image input for the Qwen vision-language family (Qwen3.5 / Qwen3.6 with a ``vision_config``).

What a vision model adds to its language model:

- the vision tower, transformers' own module for the checkpoint's ``vision_config`` with the
  checkpoint's ``model.visual.*`` weights. It runs once per prompt with images (see
  `engine.media`), not in the step loop's per-token work, so it is not ported to the engine's
  batch layout;
- its output placed at the image placeholder tokens of the flat batch;
- multimodal rotary positions: each rotary frequency turns with the temporal, height or width
  position, interleaved as ``mrope_section`` says (``T H W T H W ... T T``). Text tokens have
  the same position in all three, so text alone rotates exactly as a one-dimensional rope does.
"""

from __future__ import annotations

import torch

from helexa_torch.models.rotary import Rotary


class MultimodalRotary(Rotary):
    """Rotary tables of one-dimensional rope, read per frequency at a 3D position."""

    def __init__(self, config, head_dim: int, max_positions: int, device: torch.device) -> None:
        super().__init__(config, head_dim, max_positions, device)
        section = (config.rope_parameters or {}).get("mrope_section") or [self.dim // 2, 0, 0]
        half = self.dim // 2
        axis = torch.zeros(half, dtype=torch.long, device="cpu")  # not on the meta device a model builds on
        axis[1 : section[1] * 3 : 3] = 1  # height
        axis[2 : section[2] * 3 : 3] = 2  # width
        self.axis = torch.cat((axis, axis)).to(device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        if positions.dim() == 1:
            return super().forward(positions, q, k)
        index = self.axis[None, None, :].expand(1, positions.shape[1], -1)
        cos = self.cos[positions].gather(0, index)[0].unsqueeze(1)  # [3, n, dim] -> [n, 1, dim]
        sin = self.sin[positions].gather(0, index)[0].unsqueeze(1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)


def image_positions(start: int, grid: tuple[int, int, int], merge: int) -> tuple[torch.Tensor, int]:
    """Positions [3, tokens] of one image's tokens beginning at text position ``start``, and the
    position the text after it resumes at."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((tt, hh, ww)).reshape(3, -1) + start, start + max(h, w)


def prompt_positions(
    length: int, spans: list[tuple[int, int]], grids: list[tuple[int, int, int]], merge: int
) -> tuple[torch.Tensor, int]:
    """Multimodal positions [3, length] of a prompt whose images fill ``spans``, and its delta
    (the position of the token after the prompt minus its index)."""
    pieces, index, position = [], 0, 0
    for (first, end), grid in zip(spans, grids, strict=True):
        if first > index:
            pieces.append(torch.arange(first - index).expand(3, -1) + position)
            position += first - index
        image, position = image_positions(position, grid, merge)
        if image.shape[1] != end - first:
            raise ValueError(f"an image of grid {grid} has {image.shape[1]} tokens, not {end - first}")
        pieces.append(image)
        index = end
    if length > index:
        pieces.append(torch.arange(length - index).expand(3, -1) + position)
        position += length - index
    return torch.cat(pieces, dim=1), position - length


class VisionLanguage:
    """Mixed into a language model (before it in the bases) when its config has a ``vision_config``.

    The language model calls `embed_inputs` and `rotary_positions` in its forward; without a
    ``vision_config`` both are the text model's own and nothing of the tower is built.
    """

    vision = False
    """Whether this model reads images (its config has a ``vision_config``)."""

    def setup_vision(self, config, device: torch.device, max_positions: int) -> None:
        vision_config = getattr(config, "vision_config", None)
        if vision_config is None:
            return
        from transformers import AutoModel

        self.vision = True
        self.vision_config = vision_config
        self.merge = int(vision_config.spatial_merge_size)
        self.image_token_id = int(config.image_token_id)
        self.visual = AutoModel.from_config(vision_config, attn_implementation="sdpa")
        rotary = MultimodalRotary(self.config, self.head_dim, max_positions, device)
        for layer in self.model.layers:
            if hasattr(layer, "self_attn"):
                layer.self_attn.rotary = rotary

    def materialize(self, device: torch.device):
        """As the language model, but the tower is rebuilt on ``device`` (uninitialised): its
        rotary frequencies are buffers that only its constructor computes."""
        if not self.vision or self.visual is None:
            return super().materialize(device)
        from transformers import AutoModel
        from transformers.initialization import no_init_weights

        dtype = next(self.visual.parameters()).dtype
        del self.visual
        built = super().materialize(device)
        with no_init_weights(), torch.device(device):
            built.visual = AutoModel.from_config(self.vision_config, attn_implementation="sdpa", dtype=dtype)
        return built

    def drop_tower(self) -> None:
        """Serve without the tower (a tensor-parallel worker: rank 0 runs it); its weights are skipped."""
        self.visual = None

    def encode_images(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """The tower's embeddings [image tokens, hidden] for every image, in order."""
        device = self.model.embed_tokens.weight.device
        dtype = next(self.visual.parameters()).dtype
        output = self.visual(pixel_values.to(device, dtype), grid_thw=grids.to(device))
        return output.pooler_output

    def embed_inputs(self, input_ids: torch.Tensor, ctx) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        media = ctx.media
        if media is not None and media.rows is not None:
            x = x.index_copy(0, media.rows, media.embeds.to(x.dtype))
        return x

    def rotary_positions(self, positions: torch.Tensor, ctx) -> torch.Tensor:
        return ctx.media.positions if self.vision and ctx.media is not None else positions

    def route(self, name: str):
        if self.vision and name.startswith("model.visual."):
            return name.removeprefix("model."), None
        return super().route(name)

    def skip(self, name: str) -> bool:
        if self.vision and name.startswith("model.visual."):
            return self.visual is None
        return super().skip(name)
