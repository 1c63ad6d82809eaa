"""Reading checkpoint tensors one at a time, so a load never holds more than the model plus one tensor.

Safetensors: the header is parsed here and each tensor is read with plain file reads
into a buffer of its own dtype (no memory map: mapped pages would count against the
process until the whole file is closed). GGUF: each tensor is dequantized on its own
and renamed to transformers' names with transformers' own per-architecture processors
(which also undo llama.cpp's q/k permutation and Gemma's norm offset).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import mmap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CHUNK = 1 << 30  # one read() returns at most ~2 GiB on Linux


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensor table of a safetensors file and the offset where tensor data begins."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of one file, in file order, each in a fresh CPU buffer of its stored dtype."""
    header, base = safetensors_header(path)
    with open(path, "rb", buffering=0) as f:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{path.name}: tensor {name!r} has unsupported dtype {info['dtype']}")
            buffer = torch.empty(end - start, dtype=torch.uint8)
            f.seek(base + start)
            _read_into(f, memoryview(buffer.numpy()), name)
            yield name, buffer.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
            del buffer
            release_freed_memory()


def fill(param: torch.nn.Parameter, tensor: torch.Tensor, name: str) -> None:
    """Give a parameter its checkpoint tensor: adopted as is where it already fits, else copied in.

    Adopting the buffer just read (same shape, dtype and device, owning all of its storage)
    frees the parameter's untouched storage instead of writing into it, so a load never
    holds the largest tensors twice (an untied embedding and LM head are a quarter of a
    small model).
    """
    if tensor.shape != param.shape:
        raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
    owns_storage = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    if (
        tensor.dtype == param.dtype
        and tensor.device == param.device
        and tensor.is_contiguous()
        and owns_storage
    ):
        param.data = tensor
    else:
        param.data.copy_(tensor)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (AttributeError, OSError):
        return None


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system between tensors.

    A buffer that was copied into its parameter and freed leaves a hole in glibc's heap that
    the next, differently sized tensor does not always fill: over a load the holes add up to
    a sixth of the weights. Trimming after each tensor keeps the peak at the weights plus one.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _read_into(f, view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        count = f.readinto(view[done : done + CHUNK])
        if not count:
            raise ValueError(f"the file ends inside tensor {name!r}")
        done += count


_GGUF_LOCK = threading.Lock()


@contextlib.contextmanager
def gguf_shortcuts(reader: Any) -> Iterator[None]:
    """Spare transformers' GGUF code its repeated work while it reads our file.

    Its config and tokenizer loaders each parse the whole file again (seconds for a large
    vocabulary), and its name mapping rebuilds gguf's table of tensor names for every
    module (seconds more). Both look the `gguf` functions up when called, so for the
    duration they get our open reader and a memoised table.
    """
    import gguf

    with _GGUF_LOCK:
        reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        gguf.GGUFReader = lambda *_args, **_kwargs: reader
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def read_gguf(reader: Any, config: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of an open `gguf.GGUFReader`, dequantized to float32, in transformers' naming."""
    import numpy as np
    from gguf import dequantize
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    with torch.device("meta"), gguf_shortcuts(reader):  # only for the name mapping: no memory
        names = get_gguf_hf_weights_map(AutoModelForCausalLM.from_config(config), processor)
    # Some processors (MoE experts) assemble tensors from several GGUF tensors into this dict.
    assembled: dict[str, dict[str, torch.Tensor]] = {"tensors": {}, "config": config.to_dict()}
    mapped = getattr(reader.data, "_mmap", None)  # numpy's memmap of the whole file
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        if mapped is not None:  # the file's pages just read would otherwise count until the end
            mapped.madvise(mmap.MADV_DONTNEED)
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters=assembled
        )
        if result.name in names:
            array = np.ascontiguousarray(result.weights)
            yield names[result.name], torch.from_numpy(array if array.flags.writeable else array.copy())
        del weights, result
        release_freed_memory()
    yield from assembled["tensors"].items()
