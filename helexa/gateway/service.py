"""`Gateway`: everything one gateway process owns (fleet state, poller, lifecycle, clients, keys, metrics)."""

from __future__ import annotations

from helexa.gateway.auth import Keys
from helexa.gateway.fleet import FleetState, Lease
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neurons import NeuronClient
from helexa.gateway.poller import Poller
from helexa.gateway.upstream import Upstream
from helexa.plugins import load_plugins
from helexa.settings import Catalogue, GatewaySettings


class Gateway:
    def __init__(self, settings: GatewaySettings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.metrics = GatewayMetrics()
        self.fleet = FleetState(settings.neurons, settings.poller.unhealthy_after)
        self.clients = {n.name: NeuronClient(n.name, n.endpoint, settings) for n in settings.neurons}
        self.poller = Poller(self.fleet, self.clients, settings.poller.interval_s, self.metrics)
        plugins = load_plugins(disabled=settings.plugins.disable, prefer=settings.plugins.prefer)
        strategy = plugins.eviction_strategies.get(settings.eviction.strategy)()
        self.lifecycle = Lifecycle(
            settings, catalogue, self.fleet, self.clients, strategy, self.metrics, self.poller.poll
        )
        self.keys = Keys(settings.auth)
        self.max_body = int(settings.gateway.max_body_mb * 1024 * 1024)

    def upstream(self, lease: Lease) -> Upstream:
        """A proxied request on the leased replica; it holds the lease until closed."""
        proxy = self.settings.proxy
        return Upstream(
            self.clients[lease.node.name],
            lease,
            self.metrics,
            proxy.stall_timeout_s,
            proxy.first_byte_timeout_s,
        )

    async def start(self) -> None:
        self.poller.start()

    async def stop(self) -> None:
        await self.poller.stop()
        for client in self.clients.values():
            await client.close()
