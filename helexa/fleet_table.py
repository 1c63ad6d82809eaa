"""`helexa status` output: the fleet as rich tables, for operators at a terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _model(model: dict[str, Any]) -> str:
    status = model["status"]
    colour = {"loaded": "green", "loading": "yellow", "failed": "red", "parked": "blue"}.get(status, "cyan")
    text = f"{model['id']} [{colour}]{status}[/]"
    if status == "parked" and model.get("parked_mb"):
        text += f" ({model['parked_mb']} MB in host memory)"
    if status == "loading" and model.get("load_progress") is not None:
        text += f" {model['load_progress']:.0%} {model.get('load_stage') or ''}"
    if model.get("in_flight"):
        text += f" ({model['in_flight']} in flight)"
    if model.get("pinned"):
        text += " [bold]pinned[/]"
    return text


def render(fleet: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"helexa fleet (eviction: {fleet.get('eviction_strategy', '?')})")
    for column in ("neuron", "health", "devices", "free", "models"):
        table.add_column(column)
    for node in fleet["nodes"]:
        devices = "\n".join(f"{d['index']}: {d['name']} ({d['total_mb']} MB)" for d in node["devices"]) or "-"
        free = "\n".join(f"{d['free_mb']} MB" for d in node["devices"]) or "-"
        health = "[green]up[/]" if node["healthy"] else f"[red]down[/] {node.get('last_error') or ''}"
        models = "\n".join(_model(m) for m in node["models"]) or "-"
        table.add_row(f"{node['name']}\n[dim]{node['endpoint']}[/]", health, devices, free, models)
    console.print(table)
    if fleet.get("loading"):
        waiting = fleet.get("waiting", {})
        loads = ", ".join(f"{m} ({waiting.get(m, 0)} waiting)" for m in fleet["loading"])
        console.print(f"[yellow]loading:[/] {loads}")
