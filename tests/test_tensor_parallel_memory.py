"""A tensor-parallel model's memory, device by device: what the neuron reports and what placement counts."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from neurons import running_neuron

from helexa.gateway.fleet import Node, Replica
from helexa.gateway.lifecycle import Lifecycle


def test_the_neuron_lists_what_a_model_holds_on_each_of_its_devices():
    devices = [{"name": "sim-a", "memory_mb": 1000}, {"name": "sim-b", "memory_mb": 2000}]
    with running_neuron(simulated_devices=devices) as (url, _):
        loaded = httpx.post(
            f"{url}/models/load",
            json={"model_id": "echo/tp", "tensor_parallel": 2, "options": {"size_mb": 400}},
        )
        assert loaded.status_code == 200, loaded.text
        [info] = httpx.get(f"{url}/models").json()
        assert info["devices"] == [0, 1]
        assert info["vram_per_device_mb"] == {"0": 400, "1": 400}
        assert info["vram_used_mb"] == 800


def test_placement_counts_each_device_as_the_neuron_reports_it():
    # Rank 0 holds the LM head: its device carries more than an even share of the model.
    node = Node(
        name="n",
        endpoint="http://n",
        discovery=SimpleNamespace(
            devices=[
                SimpleNamespace(index=0, vram_total_mb=1000),
                SimpleNamespace(index=1, vram_total_mb=1000),
            ]
        ),
    )
    node.replicas["big"] = Replica(
        model_id="big", status="loaded", devices=[0, 1], vram_mb=900, vram_per_device_mb={0: 600, 1: 300}
    )
    node.replicas["small"] = Replica(model_id="small", status="loaded", devices=[1], vram_mb=200)
    lifecycle = SimpleNamespace(entries={})
    view = Lifecycle.view(
        SimpleNamespace(entries={}, resident=lambda *a: Lifecycle.resident(lifecycle, *a)), node
    )
    sizes = {d.index: {r.model_id: r.size_mb for r in d.residents} for d in view.devices}
    assert sizes == {0: {"big": 600}, 1: {"big": 300, "small": 200}}
    assert [d.free_mb for d in view.devices] == [400, 500]
