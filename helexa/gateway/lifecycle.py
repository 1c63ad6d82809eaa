"""Fleet lifecycle: route to a loaded replica, or load the model where it fits, evicting to make room.

One load per model at a time (single-flight): every request that wants a cold model
waits, in a bounded queue, for that one load. To make room the configured eviction
strategy chooses victims among what may be displaced (never pinned, never busy,
never younger than the minimum residency); when nothing can move, requests wait for
room or get 503 with Retry-After. A load that fails backs off on that neuron and the
next ranked neuron is tried. Placement decisions are pure (`placement`); this module
does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from helexa.errors import ApiError
from helexa.eviction import Resident, Strategy
from helexa.gateway.fleet import FleetState, Lease, Node, Replica
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neurons import NeuronClient
from helexa.gateway.placement import DEFAULT_SIZE_MB, Device, NodeView, Room, explain, rank
from helexa.settings import Catalogue, CatalogueModel, GatewaySettings
from helexa.wire.fleet import ModelSpec

log = logging.getLogger("helexa.gateway.lifecycle")


class Lifecycle:
    def __init__(
        self,
        settings: GatewaySettings,
        catalogue: Catalogue,
        fleet: FleetState,
        clients: dict[str, NeuronClient],
        strategy: Strategy,
        metrics: GatewayMetrics,
        refresh: Callable[[str], object],
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.entries = {m.id: m for m in catalogue.models}
        self.fleet = fleet
        self.clients = clients
        self.strategy = strategy
        self.strategy_name = settings.eviction.strategy
        self.metrics = metrics
        self.refresh = refresh
        self.loads: dict[str, asyncio.Task[tuple[Node, Replica]]] = {}
        self.waiters: dict[str, int] = {}
        self.backoff: dict[tuple[str, str], float] = {}
        self.sizes: dict[str, int] = {}
        self.locks = {name: asyncio.Lock() for name in fleet.nodes}

    def resolve(self, name: str) -> str:
        return self.catalogue.aliases.get(name, name)

    # --- routing -------------------------------------------------------------------

    async def route(self, model_id: str, path: str | None = None) -> Lease:
        """A lease on the replica to send a request to, loading the model first if no neuron has it.

        With ``path`` (the neuron route the request goes to), only neurons that serve it are used, and a
        route no healthy neuron serves is refused before anything is loaded or evicted for it."""
        found = self.fleet.least_busy(model_id, path)
        while found is None:
            if path is not None:
                await self._first_polls()
                self._check_served(model_id, path)
            await self._cold(model_id)
            # Between the load finishing and this waiter resuming, another placement may already have
            # displaced the model (it had no requests in flight yet): then route again.
            found = self.fleet.least_busy(model_id, path)
        return self.fleet.lease(*found)

    def _check_served(self, model_id: str, path: str) -> None:
        known = [n for n in self.fleet.healthy() if n.discovery is not None]
        serving = [n for n in known if self.fleet.serves(n, path)]
        if known and not serving:
            offered = sorted({r for n in known for r in (n.discovery.routes if n.discovery else [])})
            raise ApiError(
                404,
                f"no neuron in this fleet serves {path} (they serve {', '.join(offered)})",
                code="route_not_served",
            )
        holders = [n.name for n, _ in self.fleet.replicas(model_id)]
        if holders and not any(self.fleet.serves(self.fleet.nodes[h], path) for h in holders):
            # loading it again would find it already loaded: say why it cannot be used instead
            raise ApiError(
                404,
                f"{model_id!r} is loaded only on {', '.join(holders)}, which do not serve {path}",
                code="route_not_served",
            )

    async def _cold(self, model_id: str) -> None:
        """Make ``model_id`` loaded somewhere, or raise why it cannot be."""
        await self._first_polls()
        if self.fleet.least_busy(model_id) is not None:
            return
        entry = self.entries.get(model_id)
        if entry is None:
            known = sorted({*self.entries, *self.catalogue.aliases, *self._loaded_anywhere()})
            hint = f"; available: {', '.join(known[:20])}" if known else ""
            if not self.fleet.healthy():
                raise ApiError(
                    503,
                    f"model {model_id!r} is not available: no neuron is healthy",
                    retry_after=5,
                    code="no_healthy_neuron",
                )
            raise ApiError(
                404,
                f"model {model_id!r} is not loaded on any neuron and not in the catalogue{hint}",
                code="model_not_found",
                param="model",
            )
        await self.ensure_loaded(entry)

    async def _first_polls(self) -> None:
        """Right after start, wait (briefly) until every neuron has answered a poll or failed enough
        to count as down, so the first requests see the fleet as it is, not as empty."""
        limit = self.settings.poller.unhealthy_after

        def unknown() -> bool:
            return any(n.last_poll is None and n.failures < limit for n in self.fleet.nodes.values())

        deadline = (
            time.monotonic() + (self.settings.poller.interval_s + self.settings.poller.timeout_s) * limit
        )
        while unknown() and time.monotonic() < deadline:
            self.fleet.changed.clear()
            try:
                await asyncio.wait_for(self.fleet.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break

    def _loaded_anywhere(self) -> set[str]:
        return {m for node in self.fleet.healthy() for m, r in node.replicas.items() if r.status == "loaded"}

    async def ensure_loaded(self, entry: CatalogueModel, node: str | None = None) -> tuple[Node, Replica]:
        model_id = entry.id
        waiting = self.waiters.get(model_id, 0)
        if waiting >= self.settings.lifecycle.wait_queue:
            raise ApiError(
                503,
                f"{waiting} requests are already waiting for {model_id!r} to load; retry shortly",
                retry_after=5,
                code="load_queue_full",
            )
        task = self.loads.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load(entry, node), name=f"load:{model_id}")
            self.loads[model_id] = task
            task.add_done_callback(lambda _: self.loads.pop(model_id, None))
        claims = not task.done()  # counted among the waiters the load claims its replica for
        self.waiters[model_id] = waiting + 1
        started = time.monotonic()
        try:
            # A little longer than the load's own wait for room, so its verdict (and reasons) comes first.
            limit = self.settings.lifecycle.wait_timeout_s + 2
            node_, replica = await asyncio.wait_for(asyncio.shield(task), limit)
        except TimeoutError:
            raise ApiError(
                503,
                f"{model_id!r} is still loading after {self.settings.lifecycle.wait_timeout_s:.0f} s;"
                " retry shortly",
                retry_after=10,
                code="load_timeout",
            ) from None
        finally:
            self.waiters[model_id] -= 1
            self.metrics.queue_wait.labels(model_id).observe(time.monotonic() - started)
            if claims and task.done() and not task.cancelled() and task.exception() is None:
                # This waiter's hold on the new replica ends here; the caller leases it (or another
                # replica) before yielding to the loop, so no placement can slip in between.
                self.fleet.unclaim(task.result()[1])
        self.metrics.cold_starts.labels(model_id, node_.name).inc()
        found = self.fleet.least_busy(model_id)
        return found if found is not None else (node_, replica)

    # --- loading -------------------------------------------------------------------

    def size_of(self, entry: CatalogueModel) -> int:
        return self.sizes.get(entry.id) or entry.vram_mb or DEFAULT_SIZE_MB

    def view(self, node: Node) -> NodeView:
        assert node.discovery is not None
        devices = []
        for info in node.discovery.devices:
            residents = tuple(
                self.resident(node, r, info.index)
                for r in node.replicas.values()
                if r.status == "loaded" and info.index in (r.devices or [0])
            )
            devices.append(Device(info.index, info.vram_total_mb, node.free_mb(info.index), residents))
        parked = frozenset(m for m, r in node.replicas.items() if r.status == "parked")
        return NodeView(node.name, tuple(devices), parked)

    def resident(self, node: Node, replica: Replica, device: int | None = None) -> Resident:
        entry = self.entries.get(replica.model_id)
        size = replica.vram_mb or (entry.vram_mb if entry else None) or DEFAULT_SIZE_MB
        on_device = (replica.vram_per_device_mb or {}).get(device) if device is not None else None
        return Resident(
            model_id=replica.model_id,
            # What evicting it frees on this device: as the neuron reports it, else an even share.
            size_mb=on_device if on_device is not None else -(-size // max(1, len(replica.devices))),
            last_used=replica.last_used,
            pinned=replica.pinned or bool(entry and node.name in entry.pinned_on),
            priority=entry.priority if entry else 0,
            in_flight=replica.in_flight + replica.claimed,
            parks=replica.parkable,
        )

    def _plan(self, entry: CatalogueModel, nodes: list[Node]):
        now = time.time()
        usable = [
            n for n in nodes if n.discovery is not None and self.backoff.get((n.name, entry.id), 0) <= now
        ]
        loaded_at = {r.model_id: r.loaded_at for n in usable for r in n.replicas.values()}
        return rank(
            entry,
            self.size_of(entry),
            [self.view(n) for n in usable],
            self.strategy,
            self.settings.eviction.min_residency_s,
            loaded_at,
            now,
        )

    async def _load(self, entry: CatalogueModel, only: str | None) -> tuple[Node, Replica]:
        deadline = time.monotonic() + self.settings.lifecycle.wait_timeout_s
        errors: dict[str, str] = {}
        while True:
            candidates = [self.fleet.nodes[only]] if only else self.fleet.healthy()
            choice = self._plan(entry, [n for n in candidates if n.healthy])
            for room in choice.ranked:
                if room.node in errors:
                    continue
                async with self.locks[room.node]:
                    node = self.fleet.nodes[room.node]
                    fresh = self._plan(entry, [node]).ranked if node.healthy else []
                    if not fresh:
                        continue
                    try:
                        return await self._place(entry, node, fresh[0])
                    except ApiError as error:
                        errors[room.node] = error.message
                        self.backoff[(room.node, entry.id)] = (
                            time.time() + self.settings.lifecycle.failure_backoff_s
                        )
                        log.error(
                            "loading %s on %s failed: %s; backing off %.0f s there",
                            entry.id,
                            room.node,
                            error.message,
                            self.settings.lifecycle.failure_backoff_s,
                        )
            if errors and not any(room.node not in errors for room in choice.ranked) and not choice.busy:
                detail = "; ".join(f"{n}: {e}" for n, e in errors.items())
                raise ApiError(
                    503, f"could not load {entry.id!r}: {detail}", retry_after=30, code="load_failed"
                )
            if not choice.ranked and not choice.busy:
                self._raise_infeasible(entry, choice.refusals, only)
            if time.monotonic() >= deadline:
                self.metrics.no_room.labels(entry.id).inc()
                reasons = "; ".join(f"{n}: {why}" for n, why in sorted({**choice.busy, **errors}.items()))
                raise ApiError(
                    503, f"no room for {entry.id!r} yet ({reasons})", retry_after=10, code="no_room"
                )
            self.fleet.changed.clear()
            try:  # wait for a request to end or a poll to land, then look again
                await asyncio.wait_for(self.fleet.changed.wait(), min(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pass

    def _raise_infeasible(self, entry: CatalogueModel, refusals: dict[str, str], only: str | None) -> None:
        down = [n for n in self.fleet.nodes.values() if not n.healthy and (only is None or n.name == only)]
        if not self.fleet.healthy() or (only and not self.fleet.nodes[only].healthy):
            raise ApiError(
                503,
                f"{entry.id!r} cannot be placed: no healthy neuron"
                + (f" ({', '.join(n.name for n in down)} down)" if down else ""),
                retry_after=5,
                code="no_healthy_neuron",
            )
        feasible_down = [
            n.name for n in down if n.discovery is not None and not self._plan(entry, [n]).refusals
        ]
        if feasible_down:
            raise ApiError(
                503,
                f"{entry.id!r} fits only on neurons that are down: {', '.join(feasible_down)}",
                retry_after=10,
                code="no_healthy_neuron",
            )
        raise ApiError(404, explain(entry.id, refusals), code="model_not_placeable", param="model")

    async def _place(self, entry: CatalogueModel, node: Node, room: Room) -> tuple[Node, Replica]:
        client = self.clients[node.name]
        # Before any await: no request may be routed to a victim from now on.
        for victim in self.fleet.evicting(node.name, list(room.evict)):
            try:
                outcome = await client.park(victim.model_id)  # the neuron parks it if it can
                log.info(
                    "evicted %s from %s (%s) to make room for %s (strategy %s)",
                    victim.model_id,
                    node.name,
                    outcome,
                    entry.id,
                    self.strategy_name,
                )
            finally:
                self.fleet.gone(node.name, victim.model_id)
            self.metrics.evictions.labels(victim.model_id, node.name, self.strategy_name, "make_room").inc()
        self.fleet.loading(node.name, entry.id, list(room.devices))
        spec = ModelSpec(
            model_id=entry.id,
            harness=entry.harness,
            quant=entry.quant,
            tensor_parallel=entry.min_devices if entry.min_devices > 1 else None,
            devices=list(room.devices),
            options=dict(entry.options),
        )
        log.info("loading %s on %s (devices %s)", entry.id, node.name, list(room.devices))
        started = time.monotonic()
        try:
            info = await client.load(spec)
        except BaseException as exc:
            self.fleet.load_failed(node.name, entry.id)
            await self._refresh(node.name)
            if not isinstance(exc, Exception):
                raise
            self.metrics.loads.labels(entry.id, node.name, "failed").observe(time.monotonic() - started)
            if isinstance(exc, ApiError):
                raise
            raise ApiError(502, f"neuron {node.name!r} did not answer the load: {exc}") from None
        elapsed = time.monotonic() - started
        # The requests that waited for this load have yet to resume and be routed here; until each
        # has, the replica is theirs (otherwise the next placement on this node, already waiting
        # for its lock, may evict it first, and two cold models wanted at once thrash forever).
        replica = self.fleet.loaded(node.name, info, claimed=self.waiters.get(entry.id, 0))
        await self._refresh(node.name)
        self.metrics.loads.labels(entry.id, node.name, "loaded").observe(elapsed)
        if info.vram_used_mb:
            self.sizes[entry.id] = info.vram_used_mb
        log.info("loaded %s on %s in %.1f s", entry.id, node.name, elapsed)
        return node, replica

    async def _refresh(self, name: str) -> None:
        """Poll the neuron now (free memory changed); not cancelled with the request that caused it."""
        await asyncio.shield(asyncio.ensure_future(self.refresh(name)))  # type: ignore[arg-type]

    # --- admin ---------------------------------------------------------------------

    async def admin_load(self, model: str, node: str | None, pinned: bool) -> tuple[Node, Replica]:
        model_id = self.resolve(model)
        if node is not None and node not in self.fleet.nodes:
            raise ApiError(
                404, f"no neuron named {node!r} (neurons: {', '.join(self.fleet.nodes)})", param="node"
            )
        existing = [(n, r) for n, r in self.fleet.replicas(model_id) if node is None or n.name == node]
        if existing:
            pair = existing[0]
        else:
            entry = self.entries.get(model_id) or CatalogueModel(id=model_id)
            pair = await self.ensure_loaded(entry, node)
            if node is not None and model_id in self.fleet.nodes[node].replicas:
                # ensure_loaded answers with the least busy replica, which may be elsewhere
                pair = (self.fleet.nodes[node], self.fleet.nodes[node].replicas[model_id])
        if pinned:
            self.fleet.pin(pair[1])
        return pair

    async def admin_park(self, model: str, node: str | None) -> dict[str, str]:
        """Evict a model, parking it where its neuron can; neuron name -> ``parked`` or ``unloaded``."""
        model_id = self.resolve(model)
        targets = self._holders(model_id, node, ("loaded",))
        outcomes = {}
        for target in targets:
            self.fleet.evicting(target.name, [model_id])
            try:
                outcomes[target.name] = await self.clients[target.name].park(model_id)
            finally:
                self.fleet.gone(target.name, model_id)
                await self._refresh(target.name)
            self.metrics.evictions.labels(model_id, target.name, self.strategy_name, "admin").inc()
            log.info("%s %s on %s (admin request)", outcomes[target.name], model_id, target.name)
        return outcomes

    async def admin_unload(self, model: str, node: str | None) -> list[str]:
        """Unload for good, parked copies included."""
        model_id = self.resolve(model)
        targets = self._holders(model_id, node, ("loaded", "parked"))
        for target in targets:
            self.fleet.evicting(target.name, [model_id])
            try:
                await self.clients[target.name].unload(model_id)
            finally:
                self.fleet.gone(target.name, model_id)
            self.metrics.evictions.labels(model_id, target.name, self.strategy_name, "admin").inc()
            log.info("unloaded %s from %s (admin request)", model_id, target.name)
        return [t.name for t in targets]

    def _holders(self, model_id: str, node: str | None, statuses: tuple[str, ...]) -> list[Node]:
        """The neurons (or the one named) holding ``model_id`` in one of ``statuses``; 404 if none."""
        held = [n for status in statuses for n, _ in self.fleet.replicas(model_id, status)]
        targets = [n for n in held if node is None or n.name == node]
        if not targets:
            raise ApiError(
                404,
                f"model {model_id!r} is not loaded" + (f" on {node!r}" if node else ""),
                code="model_not_found",
            )
        return targets
