"""Parking with the echo harness: the park budget, wakes, failed wakes, and the gateway's side of it
(eviction parks, placement prefers the neuron where a model is parked, admin park and unload)."""

from __future__ import annotations

import httpx
import openai
from click.testing import CliRunner
from fleet import running_fleet
from neurons import running_neuron

from helexa.cli import cli
from helexa.eviction import Resident, lru_key
from helexa.eviction.lru import choose as lru
from helexa.gateway.placement import Device, NodeView, rank
from helexa.neuron.parking import MB, ParkingLot
from helexa.settings import CatalogueModel
from helexa.testing import scrape

ONE_SLOT = [{"name": "sim0", "memory_mb": 300}]  # one 256 MB echo model at a time


def load(url: str, model_id: str, **options) -> httpx.Response:
    return httpx.post(f"{url}/models/load", json={"model_id": model_id, "options": options}, timeout=30)


def park(url: str, model_id: str) -> str:
    response = httpx.post(f"{url}/models/park", json={"model_id": model_id}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def models(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{url}/models").json()}


def ask(base: str, model_id: str, text: str = "hello there") -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=30)
    answer = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": text}])
    return answer.choices[0].message.content


# --- the budget, as plain data -----------------------------------------------------------


def test_the_lot_drops_the_oldest_parked_first_and_refuses_what_never_fits():
    lot = ParkingLot(600 * MB)
    lot.add("a", 256 * MB)
    lot.add("b", 256 * MB)
    assert lot.to_drop(64 * MB) == []
    assert lot.to_drop(256 * MB) == ["a"]
    assert lot.to_drop(500 * MB) == ["a", "b"]
    assert lot.to_drop(601 * MB) is None
    assert ParkingLot(0).to_drop(1) is None


# --- one neuron --------------------------------------------------------------------------


def test_a_parked_model_frees_device_memory_and_wakes_on_the_next_load():
    with running_neuron(simulated_devices=ONE_SLOT, neuron={"park_mb": 1000}) as (url, _):
        assert load(url, "p/a", size_mb=256).status_code == 200
        assert ask(url, "p/a") == "hello there"
        assert models(url)["p/a"]["parkable"] is True
        assert park(url, "p/a") == "parked"
        parked = models(url)["p/a"]
        assert (parked["status"], parked["parked_mb"], parked["vram_used_mb"]) == ("parked", 256, None)
        health = httpx.get(f"{url}/health").json()
        assert health["parked"] == {"models": ["p/a"], "used_mb": 256, "budget_mb": 1000}
        assert health["devices"][0]["vram_used_mb"] == 0  # never counted as device memory
        # Parked is not loaded: inference says so, in OpenAI's envelope.
        refused = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "p/a", "messages": [{"role": "user", "content": "x"}]},
        )
        assert refused.status_code == 404 and "parked" in refused.json()["error"]["message"]
        # Another model now fits where it was.
        assert load(url, "p/b", size_mb=256).status_code == 200
        httpx.post(f"{url}/models/unload", json={"model_id": "p/b"}).raise_for_status()
        # A load of the parked model (options as parked, or none) is a wake.
        assert load(url, "p/a").status_code == 200
        assert ask(url, "p/a") == "hello there"
        metrics = f"{url}/metrics"
        assert scrape(metrics, "helexa_neuron_wakes_total", model="p/a", outcome="ok") == 1
        assert scrape(metrics, "helexa_neuron_wake_seconds_count", model="p/a") == 1
        assert scrape(metrics, "helexa_neuron_parked_bytes") == 0
        assert httpx.get(f"{url}/health").json()["parked"]["models"] == []


def test_parking_beyond_the_budget_drops_the_oldest_parked_model():
    with running_neuron(simulated_devices=[{"name": "big", "memory_mb": 2000}], neuron={"park_mb": 600}) as (
        url,
        _,
    ):
        for name in ("p/a", "p/b", "p/c"):
            assert load(url, name, size_mb=256).status_code == 200
        assert park(url, "p/a") == "parked"
        assert park(url, "p/b") == "parked"
        assert scrape(f"{url}/metrics", "helexa_neuron_parked_bytes") == 512 * MB
        assert park(url, "p/c") == "parked"  # 768 MB > 600: the oldest (p/a) goes
        listed = models(url)
        assert "p/a" not in listed
        assert [listed["p/b"]["status"], listed["p/c"]["status"]] == ["parked", "parked"]
        assert scrape(f"{url}/metrics", "helexa_neuron_parked_dropped_total", model="p/a") == 1
        assert scrape(f"{url}/metrics", "helexa_neuron_parked_bytes") == 512 * MB
        # A model larger than the whole budget is unloaded, not parked.
        assert load(url, "p/huge", size_mb=700).status_code == 200
        assert models(url)["p/huge"]["parkable"] is False
        assert park(url, "p/huge") == "unloaded"
        assert "p/huge" not in models(url)
        # Unload for good drops a parked copy.
        httpx.post(f"{url}/models/unload", json={"model_id": "p/b"}).raise_for_status()
        assert list(models(url)) == ["p/c"]


def test_parking_off_unloads():
    with running_neuron(simulated_devices=ONE_SLOT, neuron={"park_mb": 0}) as (url, _):
        assert load(url, "p/a", size_mb=256).status_code == 200
        assert models(url)["p/a"]["parkable"] is False
        assert park(url, "p/a") == "unloaded"
        assert models(url) == {}


def test_a_failed_wake_falls_back_to_a_cold_load():
    with running_neuron(simulated_devices=ONE_SLOT, neuron={"park_mb": 1000}) as (url, _):
        assert load(url, "p/a", size_mb=256, fail_wake="the copy went wrong").status_code == 200
        assert park(url, "p/a") == "parked"
        assert load(url, "p/a").status_code == 200
        assert models(url)["p/a"]["status"] == "loaded"
        assert ask(url, "p/a") == "hello there"
        metrics = f"{url}/metrics"
        assert scrape(metrics, "helexa_neuron_wakes_total", model="p/a", outcome="failed") == 1
        assert scrape(metrics, "helexa_neuron_wakes_total", model="p/a", outcome="ok") == 0
        assert scrape(metrics, "helexa_neuron_model_load_seconds_count", model="p/a", outcome="loaded") == 2


def test_a_load_with_other_options_drops_the_parked_copy_and_loads_afresh():
    with running_neuron(simulated_devices=ONE_SLOT, neuron={"park_mb": 1000}) as (url, _):
        assert load(url, "p/a", size_mb=256).status_code == 200
        assert park(url, "p/a") == "parked"
        assert load(url, "p/a", size_mb=128).status_code == 200
        assert models(url)["p/a"]["vram_used_mb"] == 128
        assert scrape(f"{url}/metrics", "helexa_neuron_wakes_total", model="p/a", outcome="ok") == 0


# --- the gateway -------------------------------------------------------------------------


def echo(model_id: str, size: int = 256) -> dict:
    return {"id": model_id, "harness": "echo", "vram_mb": size, "options": {"size_mb": size}}


def test_through_the_gateway_an_evicted_model_is_parked_and_woken():
    catalogue = {"models": [echo("g/a"), echo("g/b")]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT, "neuron": {"park_mb": 1000}}}, catalogue
    ) as fleet:
        url = fleet.neurons["n"][0]
        first = ask(fleet.url, "g/a")
        ask(fleet.url, "g/b")
        assert models(url)["g/a"]["status"] == "parked"
        fleet.wait(lambda: fleet.gateway.fleet.nodes["n"].replicas.get("g/a", None) is not None)
        assert ask(fleet.url, "g/a") == first
        assert models(url)["g/b"]["status"] == "parked"
        assert scrape(f"{url}/metrics", "helexa_neuron_wakes_total", model="g/a", outcome="ok") == 1
        assert scrape(f"{url}/metrics", "helexa_neuron_parks_total", model="g/a", outcome="parked") == 1


def test_placement_prefers_the_neuron_where_the_model_is_parked():
    roomy = [{"name": "sim0", "memory_mb": 2000}]
    catalogue = {"models": [echo("g/a")]}
    sections = {"simulated_devices": roomy, "neuron": {"park_mb": 1000}}
    with running_fleet({"a": sections, "b": sections}, catalogue) as fleet:
        load(fleet.neurons["b"][0], "g/a", size_mb=256)  # as the catalogue entry asks
        assert park(fleet.neurons["b"][0], "g/a") == "parked"
        replicas = fleet.gateway.fleet.nodes["b"].replicas
        fleet.wait(lambda: "g/a" in replicas and replicas["g/a"].status == "parked")
        ask(fleet.url, "g/a")  # "a" has as much room, and sorts first by name: b wins for the wake
        assert fleet.models_on("b") == {"g/a"} and fleet.models_on("a") == set()
        assert scrape(f"{fleet.neurons['b'][0]}/metrics", "helexa_neuron_wakes_total", model="g/a") == 1


def test_admin_park_and_unload_for_good_and_status_shows_parked():
    catalogue = {"models": [echo("g/a")]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT, "neuron": {"park_mb": 1000}}}, catalogue
    ) as fleet:
        ask(fleet.url, "g/a")
        answer = httpx.post(f"{fleet.url}/admin/models/park", json={"model": "g/a"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"model": "g/a", "nodes": {"n": "parked"}}
        view = httpx.get(f"{fleet.url}/admin/fleet").json()
        parked = view["nodes"][0]["models"]
        assert [(m["id"], m["status"], m["parked_mb"]) for m in parked] == [("g/a", "parked", 256)]
        assert view["nodes"][0]["devices"][0]["free_mb"] == 300
        shown = CliRunner().invoke(cli, ["status", "--gateway", fleet.url], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "g/a parked (256 MB in host memory)" in shown.output
        gone = httpx.post(f"{fleet.url}/admin/models/unload", json={"model": "g/a"}, timeout=30)
        assert gone.status_code == 200, gone.text
        assert models(fleet.neurons["n"][0]) == {}
        missing = httpx.post(f"{fleet.url}/admin/models/park", json={"model": "g/a"}, timeout=30)
        assert missing.status_code == 404


# --- pure decisions ----------------------------------------------------------------------


def test_rank_puts_the_node_holding_a_parked_copy_first():
    entry = CatalogueModel(id="m")
    empty = (Device(0, 1000, 1000),)
    nodes = [NodeView("a", empty), NodeView("b", empty, frozenset({"m"})), NodeView("c", empty)]
    choice = rank(entry, 400, nodes, lru, 0, {})
    assert [room.node for room in choice.ranked] == ["b", "a", "c"]


def test_lru_evicts_a_model_that_parks_before_one_that_does_not_on_a_tie():
    dropped = Resident(model_id="dropped", size_mb=400, last_used=10.0)
    parks = Resident(model_id="parks", size_mb=400, last_used=10.0, parks=True)
    assert sorted([dropped, parks], key=lru_key)[0] is parks
    assert lru([dropped, parks], 100) == ["parks"]
    older = Resident(model_id="older", size_mb=400, last_used=5.0)
    assert lru([older, parks], 100) == ["older"]  # recency still comes first
