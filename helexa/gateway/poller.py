"""Keeps FleetState current: polls every neuron concurrently, on an interval.

Each round asks every neuron for its models and health (and, until it has it, its
discovery). A neuron is marked unhealthy only after N failed rounds in a row and
healthy again on its first success, so one slow answer does not empty the fleet.
"""

from __future__ import annotations

import asyncio
import logging

from helexa.gateway.fleet import FleetState
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neurons import NeuronClient

log = logging.getLogger("helexa.gateway.poller")


class Poller:
    def __init__(
        self, fleet: FleetState, clients: dict[str, NeuronClient], interval_s: float, metrics: GatewayMetrics
    ) -> None:
        self.fleet = fleet
        self.clients = clients
        self.interval_s = interval_s
        self.metrics = metrics
        self.task: asyncio.Task[None] | None = None

    async def poll(self, name: str) -> None:
        client = self.clients[name]
        node = self.fleet.nodes[name]
        changes = node.changes
        try:
            discovery = await client.discovery() if node.discovery is None else None
            models, health = await asyncio.gather(client.models(), client.health())
        except Exception as exc:
            was_healthy = node.healthy
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.fleet.poll_failed(name, reason):
                log.warning(
                    "neuron %s is unhealthy after %d failed polls (%s); its models leave the fleet view",
                    name,
                    node.failures,
                    reason,
                )
            elif was_healthy:
                log.info("neuron %s did not answer a poll (%s)", name, reason)
        else:
            if not node.healthy:
                log.info("neuron %s is healthy (%s)", name, client.endpoint)
            self.fleet.poll_succeeded(name, models, health.devices, health.activation, discovery, changes)
        self.metrics.node_up.labels(name).set(1 if node.healthy else 0)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(name) for name in self.clients))

    async def run(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="poller")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
