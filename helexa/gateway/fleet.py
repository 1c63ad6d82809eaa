"""FleetState: the one owner of what the gateway knows about its neurons.

Which neurons are healthy, their devices and free memory, which models each has in
which status, and, from the gateway's own side, when each model was last used and
how many requests it has in flight there. The poller feeds it; routing, placement
and the admin views read it; the lifecycle changes it only through the named
operations below (`evicting`, `gone`, `loading`, `loaded`, `load_failed`, `pin`), so
every write to fleet state is in this module.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from helexa.settings import NeuronRef
from helexa.wire.fleet import ActivationStatus, DeviceHealth, DiscoveryResponse, ModelInfo


def per_device(info: ModelInfo) -> dict[int, int] | None:
    """The memory a neuron lists for each device of a model, by device index."""
    listed = info.vram_per_device_mb
    return {int(d): mb for d, mb in listed.items()} if listed else None


@dataclass
class Replica:
    """A model on one neuron."""

    model_id: str
    status: str  # loading | loaded | parked | failed | unloading
    devices: list[int] = field(default_factory=list)
    vram_mb: int | None = None
    vram_per_device_mb: dict[int, int] | None = None
    """What the neuron says it holds on each device (None: spread evenly over ``devices``)."""
    capabilities: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    in_flight: int = 0
    """Requests the gateway is proxying to it right now."""
    claimed: int = 0
    """Requests that waited for the gateway to load it and have not been routed to it yet: like
    requests in flight, they keep it from being evicted before they reach it."""
    last_used: float | None = None
    loaded_at: float = field(default_factory=time.time)
    """When the gateway first saw it loaded (its own clock, for minimum residency)."""
    pinned: bool = False
    """Pinned by an operator through the admin API until unloaded."""
    load_stage: str | None = None
    load_progress: float | None = None
    pending: bool = False
    """The gateway is loading or unloading it right now; polls must not drop it."""
    parkable: bool = False
    """Evicting it would park it on its neuron (weights kept in host memory) rather than drop it."""
    parked_mb: int | None = None
    """Host memory it holds while parked; a parked model holds no device memory."""

    def held_on(self, device: int) -> int:
        """Device memory it holds on ``device``: as its neuron reports it, else its whole size."""
        per_device = self.vram_per_device_mb or {}
        return per_device.get(device, self.vram_mb or 0)


@dataclass
class Node:
    name: str
    endpoint: str
    healthy: bool = False
    failures: int = 0
    discovery: DiscoveryResponse | None = None
    devices: list[DeviceHealth] = field(default_factory=list)
    activation: ActivationStatus | None = None
    replicas: dict[str, Replica] = field(default_factory=dict)
    last_poll: float | None = None
    last_error: str | None = None
    changes: int = 0
    """Bumped whenever the gateway loads or unloads here; a poll that straddles a change is stale."""

    def free_mb(self, device: int) -> int:
        for health in self.devices:
            if health.index == device:
                return health.vram_free_mb
        if self.discovery is not None:
            for info in self.discovery.devices:
                if info.index == device:
                    used = sum(
                        r.held_on(device)
                        for r in self.replicas.values()
                        if device in r.devices and r.status != "parked"
                    )
                    return max(0, info.vram_total_mb - used)
        return 0


@dataclass
class Lease:
    """A request's hold on a replica: counted in flight from routing until released, so the replica
    cannot be chosen for eviction between the routing decision and the request reaching it."""

    node: Node
    replica: Replica
    fleet: FleetState
    taken: bool = False
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.fleet.end(self.replica)


class FleetState:
    def __init__(self, neurons: list[NeuronRef], unhealthy_after: int = 2) -> None:
        self.nodes = {n.name: Node(n.name, n.endpoint) for n in neurons}
        self.unhealthy_after = unhealthy_after
        self.changed = asyncio.Event()
        """Set whenever something that could make room changes (a request ends, a poll lands)."""

    def notify(self) -> None:
        self.changed.set()

    # --- polling -------------------------------------------------------------------

    def poll_succeeded(
        self,
        name: str,
        models: list[ModelInfo],
        health: list[DeviceHealth] | None,
        activation: ActivationStatus | None,
        discovery: DiscoveryResponse | None,
        changes: int | None = None,
    ) -> None:
        """Take in a poll's answers. ``changes`` is the node's change count when the poll began: if
        the gateway loaded or unloaded something since, the model list is stale and is skipped."""
        node = self.nodes[name]
        node.healthy, node.failures, node.last_poll, node.last_error = True, 0, time.time(), None
        if discovery is not None:
            node.discovery = discovery
        node.activation = activation
        if changes is not None and changes != node.changes:
            self.notify()
            return
        if health is not None:
            node.devices = health
        seen = set()
        for info in models:
            seen.add(info.id)
            replica = node.replicas.get(info.id)
            if replica is None:
                replica = node.replicas[info.id] = Replica(model_id=info.id, status=info.status)
            if replica.pending:
                continue  # the gateway's own load or unload decides its status
            if replica.status != "loaded" and info.status == "loaded":
                replica.loaded_at = time.time()
            replica.status = info.status
            replica.devices = info.devices
            replica.vram_mb = info.vram_used_mb if info.vram_used_mb is not None else replica.vram_mb
            replica.vram_per_device_mb = per_device(info) or replica.vram_per_device_mb
            replica.capabilities = info.capabilities
            replica.max_model_len = info.max_model_len
            replica.load_stage, replica.load_progress = info.load_stage, info.load_progress
            replica.parkable, replica.parked_mb = info.parkable, info.parked_mb
        for model_id in list(node.replicas):
            if model_id not in seen and not node.replicas[model_id].pending:
                del node.replicas[model_id]
        self.notify()

    def poll_failed(self, name: str, error: str) -> bool:
        """Count a failed poll; returns True when this failure marks the neuron unhealthy."""
        node = self.nodes[name]
        node.failures += 1
        node.last_error = error
        self.notify()
        if node.healthy and node.failures >= self.unhealthy_after:
            self.mark_down(name)
            return True
        return False

    def mark_down(self, name: str, error: str | None = None) -> None:
        """An unhealthy neuron loses its models from the fleet view; they can be loaded elsewhere."""
        node = self.nodes[name]
        node.healthy = False
        if error is not None:
            node.last_error = error
        node.replicas.clear()
        self.notify()

    def suspect(self, name: str, error: str) -> None:
        """A proxied request failed mid-flight: count it like a failed poll."""
        self.poll_failed(name, error)

    # --- routing -------------------------------------------------------------------

    def healthy(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.healthy]

    def replicas(self, model_id: str, status: str = "loaded") -> list[tuple[Node, Replica]]:
        found = []
        for node in self.healthy():
            replica = node.replicas.get(model_id)
            if replica is not None and replica.status == status:
                found.append((node, replica))
        return found

    def serves(self, node: Node, path: str) -> bool:
        """Whether the neuron serves this inference route (one too old to say is taken to serve all)."""
        return node.discovery is None or not node.discovery.routes or path in node.discovery.routes

    def least_busy(self, model_id: str, path: str | None = None) -> tuple[Node, Replica] | None:
        """The loaded replica with the fewest requests in flight (ties: least recently used), on a
        neuron that serves ``path`` when one is given."""
        found = [pair for pair in self.replicas(model_id) if path is None or self.serves(pair[0], path)]
        if not found:
            return None
        return min(found, key=lambda pair: (pair[1].in_flight, pair[1].last_used or 0.0, pair[0].name))

    def lease(self, node: Node, replica: Replica) -> Lease:
        replica.in_flight += 1
        replica.last_used = time.time()
        return Lease(node, replica, self)

    def end(self, replica: Replica) -> None:
        replica.in_flight = max(0, replica.in_flight - 1)
        replica.last_used = time.time()
        self.notify()

    # --- the gateway's own loads and unloads -----------------------------------------

    def evicting(self, name: str, model_ids: list[str]) -> list[Replica]:
        """These replicas are about to be unloaded or parked: from now on no request is routed to
        them, and a poll already under way must not bring them back."""
        node = self.nodes[name]
        victims = [node.replicas[m] for m in model_ids if m in node.replicas]
        for victim in victims:
            victim.status, victim.pending = "unloading", True
        node.changes += 1
        return victims

    def gone(self, name: str, model_id: str) -> None:
        """An eviction or unload finished (or failed: the next poll says what is really there)."""
        node = self.nodes[name]
        node.replicas.pop(model_id, None)
        node.changes += 1
        self.notify()

    def loading(self, name: str, model_id: str, devices: list[int]) -> Replica:
        """The gateway starts loading ``model_id`` here; polls leave it alone until it is done."""
        replica = Replica(model_id=model_id, status="loading", pending=True, devices=list(devices))
        self.nodes[name].replicas[model_id] = replica
        return replica

    def loaded(self, name: str, info: ModelInfo, claimed: int = 0) -> Replica:
        """The neuron answered the gateway's load: the replica is routable from now on, and held
        for the ``claimed`` requests that waited for it."""
        node = self.nodes[name]
        replica = node.replicas.get(info.id) or Replica(model_id=info.id, status="loading")
        replica.status, replica.pending, replica.loaded_at = "loaded", False, time.time()
        replica.devices, replica.vram_mb = info.devices, info.vram_used_mb
        replica.capabilities, replica.max_model_len = info.capabilities, info.max_model_len
        replica.vram_per_device_mb = per_device(info)
        replica.claimed = claimed
        node.replicas[info.id] = replica
        node.changes += 1
        self.notify()
        return replica

    def unclaim(self, replica: Replica) -> None:
        """A request that waited for the replica's load has been routed: its hold ends."""
        replica.claimed = max(0, replica.claimed - 1)

    def load_failed(self, name: str, model_id: str) -> None:
        """The gateway's load did not happen: forget the placeholder."""
        self.gone(name, model_id)

    def pin(self, replica: Replica) -> None:
        """Pinned by an operator: never evicted until unloaded."""
        replica.pinned = True
