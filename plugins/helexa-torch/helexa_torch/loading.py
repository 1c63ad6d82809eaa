"""Finding and reading a model: a local folder, a GGUF file, or a hub id in the local cache.

Weights stream into the model tensor by tensor (see `weights`); a GGUF file also gives
the config, tokenizer and chat template. Offline first: the hub is only asked when the
neuron allows downloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helexa.errors import ApiError
from helexa.neuron.sources import check_model_id
from helexa_torch.quant import unknown as unknown_quant

log = logging.getLogger("helexa.torch.loading")
Weights = Callable[[Callable[[str, float | None], None]], Iterator[tuple[str, Any]]]


@dataclass
class Checkpoint:
    """A model's files, opened: config, tokenizer, generation defaults and a weight stream."""

    source: str
    config: Any
    tokenizer: Any
    eos_ids: set[int]
    defaults: dict[str, Any]
    weights: Weights


def locate(
    model_id: str, options: dict[str, Any], roots: list[Path], hf_cache: Path | None, allow_downloads: bool
) -> Path:
    """The folder or GGUF file holding a model's weights."""
    if options.get("path"):
        path = check_model_id(str(options["path"]), roots)
        assert path is not None
        return path
    local = check_model_id(model_id, roots)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, cache_dir=hf_cache, local_files_only=not allow_downloads))
    except LocalEntryNotFoundError:
        raise ApiError(
            404,
            f"model {model_id!r} is not in the local Hugging Face cache"
            f"{' (' + str(hf_cache) + ')' if hf_cache else ''} and downloads are off on this neuron "
            "([neuron] allow_downloads)",
            code="model_not_found",
        ) from None
    except Exception as exc:
        raise ApiError(
            404, f"model {model_id!r} could not be fetched: {exc}", code="model_not_found"
        ) from None


def pick_gguf(folder: Path, quant: str | None) -> Path | None:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        return None
    if quant:
        wanted = quant.lower().replace("_", "")
        matches = [f for f in files if wanted in f.name.lower().replace("_", "")]
        if not matches:
            names = ", ".join(f.name for f in files)
            raise ApiError(
                422, f"no GGUF file matches quant {quant!r} (files: {names})", code="quant_not_found"
            )
        return matches[0]
    return files[0]


def open_checkpoint(path: Path, quant: str | None) -> Checkpoint:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ApiError(400, f"{path} is a file but not a GGUF model", param="model_id")
        if quant and quant.lower().replace("_", "") not in path.name.lower().replace("_", ""):
            raise unknown_quant(quant)
        return _open_gguf(path)
    shards = sorted(path.glob("*.safetensors"))
    if (path / "config.json").exists() and shards and not quant:
        return _open_safetensors(path, shards)
    gguf = pick_gguf(path, quant)
    if gguf is not None:
        return _open_gguf(gguf)
    if quant:  # a quant that names no GGUF file here and no bnb scheme: never ignored
        raise unknown_quant(quant)
    if shards:
        return _open_safetensors(path, shards)
    raise ApiError(
        422, f"{path} holds neither safetensors weights with a config.json nor a GGUF file", code="empty_repo"
    )


def _eos_ids(config: Any, tokenizer: Any, generation: Any | None) -> set[int]:
    ids: set[int] = set()
    for source in (generation, config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _defaults(generation: Any | None) -> dict[str, Any]:
    if generation is None or not getattr(generation, "do_sample", True):
        return {}
    return {k: getattr(generation, k) for k in SAMPLING_KEYS if getattr(generation, k, None) is not None}


def _open_safetensors(folder: Path, shards: list[Path]) -> Checkpoint:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    generation = None
    if (folder / "generation_config.json").exists():
        generation = GenerationConfig.from_pretrained(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():  # only the shards the index names, in its order
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [folder / n for n in names]

    def weights(progress: Callable[[str, float | None], None]) -> Iterator[tuple[str, Any]]:
        from helexa_torch.weights import read_safetensors

        for i, shard in enumerate(shards):
            progress(f"reading {shard.name}", i / len(shards))
            yield from read_safetensors(shard)

    return Checkpoint(
        str(folder),
        config,
        tokenizer,
        _eos_ids(config, tokenizer, generation),
        _defaults(generation),
        weights,
    )


def _open_gguf(file: Path) -> Checkpoint:
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoTokenizer

    from helexa_torch.weights import gguf_shortcuts, release_freed_memory

    folder, name = str(file.parent), file.name
    reader = GGUFReader(file)
    with gguf_shortcuts(reader):
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The vocabulary's fields are a hundred thousand small arrays (over 100 MB for a 49k
    # vocabulary) that nothing reads once the tokenizer is built; the weights need none of them.
    reader.fields = {key: field for key, field in reader.fields.items() if not key.startswith("tokenizer.")}
    release_freed_memory()

    def weights(progress: Callable[[str, float | None], None]) -> Iterator[tuple[str, Any]]:
        from helexa_torch.weights import read_gguf

        total = len(reader.tensors)
        for i, item in enumerate(read_gguf(reader, config)):
            if i % 16 == 0:
                progress(f"dequantizing {name}", min(1.0, i / total))
            yield item

    return Checkpoint(str(file), config, tokenizer, _eos_ids(config, tokenizer, None), {}, weights)
