"""The plugin host: finds plugins through entry points and files what they offer.

Plugins live in the entry-point group ``helexa``. Each entry point is loaded on its
own, so a plugin that fails to import (or implements a hook that does not exist) is
recorded with its error and the rest keep working. Names listed in
``HELEXA_DISABLE_PLUGINS`` (comma separated) or in config ``[plugins] disable`` are
blocked before anything is imported. ``HELEXA_STRICT_PLUGINS=1`` turns every plugin
failure into an exception, for plugin authors.

What plugins register lands in name-keyed `Registry` objects; the rest of helexa
finds harnesses, architectures and eviction strategies only through them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec
import pluggy

from helexa import hookspecs

log = logging.getLogger("helexa.plugins")

GROUP = "helexa"
DISABLE_ENV = "HELEXA_DISABLE_PLUGINS"
STRICT_ENV = "HELEXA_STRICT_PLUGINS"

# registry kind -> the hook that fills it
HOOKS: dict[str, str] = {
    "harness": "register_harnesses",
    "architecture": "register_architectures",
    "eviction_strategy": "register_eviction_strategies",
    "tool_parser": "register_tool_parsers",
}


class PluginInfo(msgspec.Struct, kw_only=True):
    """One plugin as `helexa plugins` shows it."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = msgspec.field(default_factory=dict)
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None


class UnknownEntry(LookupError):
    """A name that no installed plugin registered."""


@dataclass
class Entry:
    factory: Callable[..., Any]
    plugin: str


@dataclass
class Registry:
    """Name -> factory for one kind of thing plugins offer."""

    kind: str
    prefer: Mapping[str, str] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, name: str, factory: Callable[..., Any], plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind} {name!r}: factory must be callable, got {type(factory).__name__}")
        current = self.entries.get(name)
        if current is None:
            self.entries[name] = Entry(factory, plugin)
            return
        wanted = self.prefer.get(f"{self.kind}.{name}")
        winner = plugin if wanted == plugin else current.plugin
        log.warning(
            "%s %r is offered by plugins %r and %r; using %r "
            '(choose with [plugins.prefer] "%s.%s" = "<plugin>")',
            self.kind,
            name,
            current.plugin,
            plugin,
            winner,
            self.kind,
            name,
        )
        if winner == plugin:
            self.entries[name] = Entry(factory, plugin)

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self.entries[name].factory
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise UnknownEntry(f"no {self.kind} named {name!r} is installed (installed: {known})") from None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def remove_plugin(self, plugin: str) -> None:
        for name in [n for n, e in self.entries.items() if e.plugin == plugin]:
            del self.entries[name]


@dataclass
class PluginHost:
    """The loaded plugins and the registries they filled."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    registries: dict[str, Registry]

    @property
    def harnesses(self) -> Registry:
        return self.registries["harness"]

    @property
    def architectures(self) -> Registry:
        return self.registries["architecture"]

    @property
    def eviction_strategies(self) -> Registry:
        return self.registries["eviction_strategy"]

    @property
    def tool_parsers(self) -> Registry:
        return self.registries["tool_parser"]

    def info(self, name: str) -> PluginInfo | None:
        return next((p for p in self.plugins if p.name == name), None)

    def architecture_runtimes(self) -> dict[str, str]:
        """Each architecture by its first registered name -> ``native`` or ``fallback``.

        A factory registered under several names (an HF class and its model types) is listed
        once; a factory says it is a fallback with a ``runtime`` attribute, read without
        calling it (calling would import torch).
        """
        seen: dict[int, str] = {}
        runtimes = {}
        for name, entry in self.architectures.entries.items():
            if id(entry.factory) in seen:
                continue
            seen[id(entry.factory)] = name
            runtimes[name] = getattr(entry.factory, "runtime", "native")
        return runtimes


def disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    prefer: Mapping[str, str] | None = None,
    discovered: Iterable[EntryPoint] | None = None,
    extra: Mapping[str, object] | None = None,
) -> PluginHost:
    """Load every plugin and collect what it registers.

    Args:
        disabled: plugin names to block (added to ``HELEXA_DISABLE_PLUGINS``).
        prefer: ``"kind.name" -> plugin`` choices for names offered twice.
        discovered: entry points to load instead of the installed ones (tests).
        extra: plugin objects to register directly, by name (tests, embedding).
    """
    strict = os.environ.get(STRICT_ENV, "") not in ("", "0", "false")
    blocked = disabled_from_env() | set(disabled)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    eps = sorted(entry_points(group=GROUP) if discovered is None else discovered, key=lambda e: e.name)
    plugins: list[PluginInfo] = []
    for ep in eps:
        info = PluginInfo(name=ep.name, module=ep.value, **_distribution(ep))
        plugins.append(info)
        if ep.name in blocked:
            pm.set_blocked(ep.name)
            info.status = "disabled"
            continue
        _register(pm, info, ep.load, strict)
    for name, obj in (extra or {}).items():
        info = PluginInfo(name=name, module=getattr(obj, "__name__", type(obj).__name__))
        plugins.append(info)
        _register(pm, info, lambda obj=obj: obj, strict)
    registries = {kind: Registry(kind, prefer or {}) for kind in HOOKS}
    by_name = {p.name: p for p in plugins}
    for kind, hook in HOOKS.items():
        _collect(pm, hook, registries[kind], by_name, strict)
    return PluginHost(pm=pm, plugins=plugins, registries=registries)


def _distribution(ep: EntryPoint) -> dict[str, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return {}
    return {"distribution": dist.metadata["Name"], "version": dist.version}


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], object], strict: bool) -> None:
    try:
        plugin = load()
        pm.register(plugin, name=info.name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError:
            pm.unregister(name=info.name)
            raise
    except Exception as exc:
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}"
        log.error("plugin %r (%s) failed to load and is skipped: %s", info.name, info.module, info.error)
        if strict:
            raise


def _collect(
    pm: pluggy.PluginManager,
    hook: str,
    registry: Registry,
    infos: dict[str, PluginInfo],
    strict: bool,
) -> None:
    # Each implementation is called on its own, so one that raises is reported
    # against its plugin and the others still register.
    for impl in getattr(pm.hook, hook).get_hookimpls():  # in registration order
        plugin = impl.plugin_name
        info = infos.get(plugin)

        def register(name: str, factory: Callable[..., Any], _plugin: str = plugin) -> None:
            registry.add(name, factory, _plugin)

        try:
            impl.function(*[{"register": register}[a] for a in impl.argnames])
        except Exception as exc:
            registry.remove_plugin(plugin)
            log.error("plugin %r failed in %s and registered nothing there: %s", plugin, hook, exc)
            if info is not None:
                info.status = "failed"
                info.error = f"{hook}: {type(exc).__name__}: {exc}"
            if strict:
                raise
    for name, entry in registry.entries.items():
        info = infos.get(entry.plugin)
        if info is not None:
            info.registered.setdefault(registry.kind, []).append(name)
