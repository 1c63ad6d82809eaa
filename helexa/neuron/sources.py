"""Which model ids a neuron accepts: ``org/name`` hub ids, or local paths under the model roots.

Everything else (``..``, absolute paths outside the roots, URLs, ``~``) is refused
before a harness ever sees it.
"""

from __future__ import annotations

import re
from pathlib import Path

from helexa.errors import ApiError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FORBIDDEN_OPTIONS = {"trust_remote_code", "code_revision", "auto_map"}


def is_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or model_id in (".", "..")


def check_model_id(model_id: str, roots: list[Path]) -> Path | None:
    """Validate a model id; returns the resolved path for a local model, None for a hub id."""
    if not model_id or len(model_id) > 4096 or "\x00" in model_id:
        raise ApiError(400, "model_id must be a hub id (org/name) or a local path", param="model_id")
    if "://" in model_id:
        raise ApiError(
            400, f"model_id {model_id!r} is a URL; use a hub id (org/name) or a local path", param="model_id"
        )
    if not is_local(model_id):
        if ".." in model_id or not HUB_ID.match(model_id):
            raise ApiError(
                400, f"model_id {model_id!r} is not a hub id of the form org/name", param="model_id"
            )
        return None
    if model_id.startswith("~"):
        raise ApiError(400, "model_id must not use ~; give the path under a model root", param="model_id")
    if not roots:
        raise ApiError(
            403,
            f"local model paths are not allowed on this neuron: no [neuron] model_roots "
            f"are configured ({model_id!r})",
            param="model_id",
        )
    path = Path(model_id).resolve()
    if not any(path.is_relative_to(root.resolve()) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ApiError(
            403, f"model path {model_id!r} is outside the model roots ({allowed})", param="model_id"
        )
    if not path.exists():
        raise ApiError(
            404, f"model path {model_id!r} does not exist", code="model_not_found", param="model_id"
        )
    return path


def check_options(options: dict[str, object]) -> None:
    bad = sorted(FORBIDDEN_OPTIONS & set(options))
    if bad:
        raise ApiError(
            400,
            f"option {bad[0]!r} is not allowed: helexa never runs code shipped with a model",
            param=f"options.{bad[0]}",
        )
