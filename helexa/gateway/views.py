"""What the gateway shows about the fleet: ``/v1/models``, ``/admin/fleet`` and ``/health``."""

from __future__ import annotations

import time
from typing import Any

from helexa.gateway.fleet import FleetState
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.placement import infeasible_reason


def model_list(fleet: FleetState, lifecycle: Lifecycle) -> dict[str, Any]:
    """Every catalogue model and every model a neuron has, with where it is and where it could go."""
    now = int(time.time())
    entries: dict[str, dict[str, Any]] = {}

    def entry(model_id: str) -> dict[str, Any]:
        return entries.setdefault(
            model_id,
            {
                "id": model_id,
                "object": "model",
                "created": now,
                "owned_by": "helexa",
                "loaded": False,
                "feasible_on": [],
                "locations": [],
                "capabilities": [],
            },
        )

    views = {n.name: lifecycle.view(n) for n in fleet.healthy() if n.discovery is not None}
    for model in lifecycle.catalogue.models:
        item = entry(model.id)
        size = lifecycle.size_of(model)
        item["feasible_on"] = [
            name for name, view in views.items() if infeasible_reason(model, view, size) is None
        ]
        if model.description:
            item["description"] = model.description
    for node in fleet.healthy():
        for replica in node.replicas.values():
            item = entry(replica.model_id)
            item["locations"].append(
                {
                    "node": node.name,
                    "status": replica.status,
                    "vram_estimate_mb": replica.vram_mb,
                    "in_flight": replica.in_flight,
                }
            )
            if replica.status == "loaded":
                item["loaded"] = True
                item["capabilities"] = sorted({*item["capabilities"], *replica.capabilities})
            if replica.max_model_len:
                known = item.get("max_model_len")
                item["max_model_len"] = min(known, replica.max_model_len) if known else replica.max_model_len
    for model in lifecycle.catalogue.models:
        if model.max_model_len and "max_model_len" not in entries[model.id]:
            entries[model.id]["max_model_len"] = model.max_model_len
    for alias, target in lifecycle.catalogue.aliases.items():
        if target in entries:
            entries[alias] = {**entries[target], "id": alias, "alias_of": target}
    return {"object": "list", "data": list(entries.values())}


def fleet_view(fleet: FleetState, lifecycle: Lifecycle) -> dict[str, Any]:
    nodes = []
    for node in fleet.nodes.values():
        discovery = node.discovery
        nodes.append(
            {
                "name": node.name,
                "endpoint": node.endpoint,
                "healthy": node.healthy,
                "failures": node.failures,
                "last_error": node.last_error,
                "last_poll": node.last_poll,
                "hostname": discovery.hostname if discovery else None,
                "devices": [
                    {
                        "index": d.index,
                        "name": d.name,
                        "kind": d.kind,
                        "total_mb": d.vram_total_mb,
                        "free_mb": node.free_mb(d.index),
                    }
                    for d in (discovery.devices if discovery else [])
                ],
                "models": [
                    {
                        "id": r.model_id,
                        "status": r.status,
                        "devices": r.devices,
                        "vram_mb": r.vram_mb,
                        "parked_mb": r.parked_mb,
                        "in_flight": r.in_flight,
                        "last_used": r.last_used,
                        "pinned": r.pinned,
                        "load_stage": r.load_stage,
                        "load_progress": r.load_progress,
                    }
                    for r in node.replicas.values()
                ],
            }
        )
    loading = sorted(lifecycle.loads)
    return {
        "nodes": nodes,
        "loading": loading,
        "waiting": {m: n for m, n in lifecycle.waiters.items() if n},
        "eviction_strategy": lifecycle.strategy_name,
    }


def health(fleet: FleetState) -> dict[str, Any]:
    healthy = len(fleet.healthy())
    return {
        "status": "ok" if healthy else "degraded",
        "nodes": {"healthy": healthy, "total": len(fleet.nodes)},
    }
