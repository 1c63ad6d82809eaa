"""Meta-tests that keep the contracts true: every hook documented and exercised, every config key
documented and every documented key real."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import pytest

from helexa import hookspecs
from helexa.settings import KINDS, Section

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text()
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
TESTS = [
    p for p in [*ROOT.glob("tests/*.py"), *ROOT.glob("plugins/*/tests/*.py")] if p.name != "test_meta.py"
]
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if callable(value) and hasattr(value, "helexa_spec")  # pluggy marks hookspecs with PROJECT + "_spec"
)


def test_there_are_hooks():
    assert {"register_harnesses", "register_architectures", "register_eviction_strategies"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert f"`{hook}(register)`" in PLUGINS_DOC, f"{hook} is not in docs/plugins.md's hook table"
    assert (getattr(hookspecs, hook).__doc__ or "").count("register(") >= 1, (
        f"{hook} has no docstring contract"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    users = [p.name for p in TESTS if re.search(rf"def {hook}\(|\.{hook}\(", p.read_text())]
    assert users, f"no test implements or calls {hook}"


# --- configuration keys -----------------------------------------------------------------


def section_type(annotation: Any) -> tuple[type[Section] | None, bool]:
    """The Section a field holds (and whether it is a list of them), else None."""
    if get_origin(annotation) is list:
        inner = get_args(annotation)[0]
        return (
            (inner, True) if isinstance(inner, type) and issubclass(inner, msgspec.Struct) else (None, True)
        )
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    return None, False


def existing_keys(kind: type[Section]) -> set[str]:
    keys = set()
    for field in msgspec.structs.fields(kind):
        inner, _ = section_type(field.type)
        if inner is None or not issubclass(inner, Section):
            keys.add(field.encode_name)
            continue
        keys.update(f"{field.encode_name}.{sub.encode_name}" for sub in msgspec.structs.fields(inner))
    return keys


def documented_keys(kind: str) -> tuple[set[str], set[str]]:
    """Keys in the first column of the file's table in docs/configuration.md, and whole tables documented."""
    heading = "## models.toml" if kind == "models" else f"## {kind}.toml"
    start = CONFIG_DOC.index(heading)
    end = CONFIG_DOC.find("\n## ", start + 1)
    keys, tables = set(), set()
    for line in CONFIG_DOC[start : end if end > 0 else None].splitlines():
        if not line.startswith("| `") and not line.startswith("| ["):
            continue
        cell = line.split("|")[1]
        prefix = "models" if kind == "models" else ""
        for token in re.findall(r"`([^`]+)`", cell):
            table = re.fullmatch(r"\[\[?([\w.<>]+)\]?\]", token)
            if table:
                prefix = table.group(1).split(".")[0]
                tables.add(prefix)
            elif "." in token:
                prefix = token.split(".")[0]
                keys.add(token)
            else:
                keys.add(f"{prefix}.{token}" if prefix else token)
    return keys, tables


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_config_key_is_documented_and_every_documented_key_exists(kind):
    exists = existing_keys(KINDS[kind])
    if kind == "models":  # the catalogue's keys are its entries' keys
        exists = {
            f"models.{f.encode_name}"
            for f in msgspec.structs.fields(
                section_type(next(f.type for f in msgspec.structs.fields(KINDS[kind]) if f.name == "models"))[
                    0
                ]
            )
        } | {"aliases"}
    documented, tables = documented_keys(kind)
    covered = {key for key in exists if key.split(".")[0] in tables}
    missing = sorted(exists - documented - covered - tables)
    assert not missing, f"{kind}.toml keys not in docs/configuration.md: {missing}"
    unknown = sorted(k for k in documented if k not in exists and k.split(".")[0] not in tables)
    assert not unknown, f"docs/configuration.md documents {kind}.toml keys that do not exist: {unknown}"


# --- one owner of fleet state -------------------------------------------------------------


def fleet_writes(path: Path) -> list[str]:
    """Assignments to a Node's or Replica's fields (and changes to ``replicas``) in a module."""
    import ast
    import dataclasses

    from helexa.gateway.fleet import Node, Replica

    fields = {f.name for f in dataclasses.fields(Node)} | {f.name for f in dataclasses.fields(Replica)}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for target in node.targets for t in getattr(target, "elts", [target])]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            mutators = {"pop", "clear", "update", "setdefault", "popitem"}
            if isinstance(owner, ast.Attribute) and owner.attr == "replicas" and node.func.attr in mutators:
                found.append(f"{path.name}:{node.lineno} replicas.{node.func.attr}()")
        for target in targets:
            if isinstance(target, ast.Subscript):
                target = target.value
            # ``self.x`` in a module that is not fleet.py is that class's own state, not the fleet's
            own = isinstance(target, ast.Attribute) and ast.unparse(target.value) == "self"
            if isinstance(target, ast.Attribute) and target.attr in fields and not own:
                found.append(f"{path.name}:{node.lineno} {ast.unparse(target)}")
    return found


def test_fleet_state_is_written_only_by_fleet_state():
    modules = [p for p in (ROOT / "helexa" / "gateway").glob("*.py") if p.name != "fleet.py"]
    writes = [w for p in sorted(modules) for w in fleet_writes(p)]
    assert writes == [], "fleet state written outside FleetState: " + ", ".join(writes)
    assert fleet_writes(ROOT / "helexa" / "gateway" / "fleet.py")  # the check sees writes where they are


def test_placement_has_no_policy_named_after_a_strategy():
    for name in ("placement.py", "lifecycle.py"):
        source = (ROOT / "helexa" / "gateway" / name).read_text()
        assert '== "priority"' not in source and "use_priority" not in source, name


def test_no_near_copies_of_six_lines_in_the_http_layers():
    """The HTTP layers (gateway, neuron routes and app, shared ASGI helpers) say each thing once."""
    files = [
        *sorted((ROOT / "helexa" / "gateway").glob("*.py")),
        *(
            ROOT / "helexa" / "neuron" / name
            for name in ("routes.py", "app.py", "completions.py", "responses.py")
        ),
        ROOT / "helexa" / "asgi.py",
        ROOT / "helexa" / "openapi.py",
    ]
    seen: dict[tuple[str, ...], str] = {}
    copies = []
    for path in files:
        lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
        code = [(n, text) for n, text in lines if text and not text.startswith("#")]
        for k in range(len(code) - 5):
            window = tuple(text for _, text in code[k : k + 6])
            if sum(map(len, window)) < 100:  # six short lines (closing brackets, returns) are not a copy
                continue
            where = f"{path.name}:{code[k][0]}"
            if window in seen:
                copies.append(f"{seen[window]} ~ {where}")
            seen.setdefault(window, where)
    assert copies == []
