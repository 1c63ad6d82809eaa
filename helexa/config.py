"""Loads helexa config files: TOML, then environment overrides, then the command line.

Every key of every file can be overridden by an environment variable named
``HELEXA_<SECTION>__<KEY>``: the key path upper-cased, parts joined by ``__``
(``HELEXA_GATEWAY__LISTEN``, ``HELEXA_POLLER__INTERVAL_S``, ``HELEXA_NEURONS`` for a
whole list). Values are read as TOML (``5``, ``true``, ``["a", "b"]``,
``[{name = "a", endpoint = "http://a:13131"}]``) unless the key is a string, which
takes the text as it is. Precedence: file < environment < command line.

Errors name the file, the key path, what was expected and what was found; an
unknown key gets a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

from helexa.settings import KINDS, Catalogue, GatewaySettings, Section

T = TypeVar("T", bound=Section)
ENV_PREFIX = "HELEXA_"


class ConfigError(ValueError):
    """A config file (or override) that helexa cannot use; the message says why."""


def kind_of(path: Path, data: Mapping[str, Any] | None = None) -> str:
    """Which settings a file holds: by its name (gateway.toml, models.toml, ...), else by its tables."""
    stem = path.name.lower()
    for kind in KINDS:
        if kind in stem:
            return kind
    if stem.startswith("catalogue"):
        return "models"
    keys = set(data or {})
    for kind, marker in (
        ("models", {"models", "aliases"}),
        ("bench", {"bench", "targets", "scenarios"}),
        ("neuron", {"neuron", "default_models", "simulated_devices"}),
        ("standalone", {"standalone"}),
        ("gateway", {"gateway", "neurons", "poller", "proxy", "eviction", "auth"}),
    ):
        if keys & marker:
            return kind
    raise ConfigError(
        f"{path}: cannot tell which helexa config this is; name it gateway.toml, "
        "neuron.toml, models.toml or bench.toml, or pass --kind"
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def load(
    settings_type: type[T],
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build settings from a file (optional), the environment and command-line overrides."""
    source = Path(path) if path is not None else None
    data = read_toml(source) if source is not None else {}
    origin: dict[str, str] = {}
    env = os.environ if environ is None else environ
    for var, value in sorted(env.items()):
        keys = _env_keys(var)
        if keys and keys[0] in _field_names(settings_type):
            _put(data, keys, _parse_value(value, _type_at(mi.type_info(settings_type), keys)))
            origin[".".join(keys)] = f"environment variable {var}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _put(data, dotted.split("."), value)
            origin[dotted] = "command line"
    label = str(source) if source is not None else "settings"
    _check_unknown(data, mi.type_info(settings_type), [], label, origin)
    try:
        settings = msgspec.convert(data, settings_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, data, label, origin)) from None
    if isinstance(settings, GatewaySettings) and source is not None:
        catalogue = Path(settings.gateway.catalogue)
        if not catalogue.is_absolute():
            settings.gateway.catalogue = str(source.parent / catalogue)
    return settings


def load_catalogue(path: Path | str, **kwargs: Any) -> Catalogue:
    catalogue = load(Catalogue, path, **kwargs)
    for alias, target in catalogue.aliases.items():
        if target in catalogue.aliases:
            raise ConfigError(
                f"{path}: aliases.{alias}: points at another alias {target!r}; "
                "aliases resolve once, point it at a model id"
            )
    return catalogue


def check_file(path: Path, kind: str | None = None) -> tuple[str, Section]:
    """Validate any helexa config file; a gateway file's catalogue is checked too."""
    kind = kind or kind_of(path, read_toml(path))
    if kind not in KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; expected one of {', '.join(KINDS)}")
    settings = load_catalogue(path) if kind == "models" else load(KINDS[kind], path)
    if isinstance(settings, GatewaySettings) and Path(settings.gateway.catalogue).exists():
        load_catalogue(settings.gateway.catalogue)
    return kind, settings


# --- environment -------------------------------------------------------------


def _env_keys(var: str) -> list[str] | None:
    if not var.startswith(ENV_PREFIX):
        return None
    parts = var[len(ENV_PREFIX) :].lower().split("__")
    return parts if all(parts) else None


def _parse_value(text: str, target: mi.Type | None) -> Any:
    if _is_str(target):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _is_str(t: mi.Type | None) -> bool:
    if isinstance(t, mi.StrType):
        return True
    if isinstance(t, mi.UnionType):
        return any(isinstance(x, mi.StrType) for x in t.types) and all(
            isinstance(x, (mi.StrType, mi.NoneType)) for x in t.types
        )
    return False


def _put(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


# --- type walking (for env parsing and unknown-key suggestions) ----------------


def _unwrap(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    if isinstance(t, mi.Metadata):
        return _unwrap(t.type)
    return t


def _field_names(settings_type: type[Section]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(settings_type)}


def _type_at(t: mi.Type, keys: list[str]) -> mi.Type | None:
    for key in keys:
        t = _unwrap(t)
        if isinstance(t, mi.StructType):
            match = next((f for f in t.fields if f.name == key), None)
            if match is None:
                return None
            t = match.type
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
    return _unwrap(t)


def _check_unknown(data: Any, t: mi.Type, path: list[str], label: str, origin: Mapping[str, str]) -> None:
    t = _unwrap(t)
    if isinstance(t, mi.StructType) and isinstance(data, dict):
        fields = {f.name: f for f in t.fields}
        for key, value in data.items():
            if key not in fields:
                where = ".".join([*path, key])
                hint = difflib.get_close_matches(key, fields, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(fields)}"
                raise ConfigError(f"{label}: {where}: unknown key{_from(where, origin)}{suggestion}")
            _check_unknown(value, fields[key].type, [*path, key], label, origin)
    elif isinstance(t, mi.ListType) and isinstance(data, list):
        for i, item in enumerate(data):
            _check_unknown(
                item, t.item_type, [*path[:-1], f"{path[-1]}[{i}]"] if path else [f"[{i}]"], label, origin
            )


def _from(where: str, origin: Mapping[str, str]) -> str:
    for key, source in origin.items():
        if where == key or where.startswith(key + ".") or where.startswith(key + "["):
            return f" (from {source})"
    return ""


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _describe(exc: msgspec.ValidationError, data: Any, label: str, origin: Mapping[str, str]) -> str:
    match = _AT.match(str(exc))
    assert match is not None
    msg, path = match["msg"], (match["path"] or "").lstrip(".")
    found = _lookup(data, path)
    msg = msg.replace("Expected `", "expected `").replace(
        "Object missing required field", "missing required key"
    )
    msg = msg.replace("`object`", "a table").replace("`array`", "a list")
    if msg.startswith("expected") and found is not _MISSING:
        msg = re.sub(r", got `[^`]*`$", "", msg) + f", found {found!r}"
    key = re.match(r"^(\w+): (.*)$", msg, re.S)
    if key:  # a __post_init__ check names the key it rejected
        path, msg = f"{path}.{key[1]}" if path else key[1], key[2]
    where = path or "(top level)"
    return f"{label}: {where}: {msg}{_from(path, origin)}"


_MISSING = object()


def _lookup(data: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return _MISSING
    return data
