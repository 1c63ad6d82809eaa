"""Fleet lifecycle over real sockets: lazy loads, eviction order, single-flight, pins, residency, failover."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest
from fleet import load, running_fleet

from helexa.testing import scrape

ONE_SLOT_PAIR = [{"name": "sim0", "memory_mb": 1000}]  # two 400 MB models fit, not three


def model(model_id, size=400, **extra):
    return {"id": model_id, "harness": "echo", "vram_mb": size, "options": {"size_mb": size}, **extra}


def ask(fleet, model_id, text="hi", **kw):
    client = openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="none", max_retries=0, timeout=60)
    return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": text}], **kw)


def evicted(fleet, model_id: str) -> float:
    return scrape(fleet.metrics_url, "helexa_gateway_evictions_total", model=model_id, reason="make_room")


@pytest.mark.parametrize(("strategy", "expected"), [("lru", ["a/A", "a/B"]), ("priority", ["a/A", "a/C"])])
def test_requests_A_B_C_A_evict_what_the_strategy_predicts(strategy, expected):
    catalogue = {"models": [model("a/A", priority=1), model("a/B", priority=5), model("a/C", priority=1)]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue, eviction={"strategy": strategy}
    ) as fleet:
        for name in ["a/A", "a/B", "a/C", "a/A"]:
            assert ask(fleet, name).choices[0].message.content == "hi"
        order = [m for m in ["a/A", "a/B", "a/C"] if evicted(fleet, m)]
        assert order == sorted(expected)
        assert sum(evicted(fleet, m) for m in ["a/A", "a/B", "a/C"]) == 2
        assert "a/A" in fleet.models_on("n")
        assert len(fleet.models_on("n")) == 2


def test_fifty_concurrent_requests_for_a_cold_model_cause_one_load():
    catalogue = {"models": [model("cold/one")]}
    catalogue["models"][0]["options"]["load_seconds"] = 0.5
    with running_fleet({"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue) as fleet:

        async def burst():
            async with httpx.AsyncClient(timeout=60) as http:
                body = {"model": "cold/one", "messages": [{"role": "user", "content": "together"}]}
                return await asyncio.gather(
                    *(http.post(f"{fleet.url}/v1/chat/completions", json=body) for _ in range(50))
                )

        replies = asyncio.run(burst())
        assert [r.status_code for r in replies] == [200] * 50
        assert all(r.json()["choices"][0]["message"]["content"] == "together" for r in replies)
        neuron_url = fleet.neurons["n"][0]
        assert (
            scrape(f"{neuron_url}/metrics", "helexa_neuron_model_load_seconds_count", model="cold/one") == 1
        )
        assert scrape(fleet.metrics_url, "helexa_gateway_load_duration_seconds_count", model="cold/one") == 1


def test_streaming_clients_get_keepalives_while_the_model_loads():
    catalogue = {"models": [model("cold/slow")]}
    catalogue["models"][0]["options"]["load_seconds"] = 1.5
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue, lifecycle={"keepalive_s": 0.3}
    ) as fleet:
        body = {"model": "cold/slow", "stream": True, "messages": [{"role": "user", "content": "warm now"}]}
        with httpx.stream("POST", f"{fleet.url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        keepalives = [line for line in lines if line.startswith(": loading")]
        assert len(keepalives) >= 3
        assert lines[-1] == "data: [DONE]"
        assert any('"warm"' in line for line in lines)


def test_a_model_with_a_stream_in_flight_is_not_evicted():
    catalogue = {"models": [model("m/busy"), model("m/idle"), model("m/new")]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR, "harness": {"echo": {"tokens_per_second": 30}}}}, catalogue
    ) as fleet:
        ask(fleet, "m/busy", max_tokens=1)
        ask(fleet, "m/idle", max_tokens=1)  # idle is the most recent: LRU alone would evict busy
        done = threading.Event()

        def long_stream():
            for _ in ask(fleet, "m/busy", "word " * 60, stream=True):
                pass
            done.set()

        thread = threading.Thread(target=long_stream)
        thread.start()
        fleet.wait(lambda: fleet.gateway.fleet.nodes["n"].replicas["m/busy"].in_flight == 1)
        ask(fleet, "m/new", max_tokens=1)
        assert not done.is_set(), "the long stream ended before the load it was meant to overlap"
        assert fleet.models_on("n") == {"m/busy", "m/new"}
        assert evicted(fleet, "m/idle") == 1 and evicted(fleet, "m/busy") == 0
        thread.join()


def test_a_pinned_model_is_never_evicted():
    catalogue = {"models": [model("p/pinned", pinned_on=["n"]), model("p/x"), model("p/y")]}
    with running_fleet({"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue) as fleet:
        for name in ["p/pinned", "p/x", "p/y", "p/x", "p/y"]:
            ask(fleet, name)
        assert "p/pinned" in fleet.models_on("n")
        assert evicted(fleet, "p/pinned") == 0
        assert evicted(fleet, "p/x") >= 1


def test_admin_pin_until_unloaded():
    catalogue = {"models": [model("q/keep"), model("q/x"), model("q/y")]}
    with running_fleet({"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue) as fleet:
        pinned = httpx.post(
            f"{fleet.url}/admin/models/load", json={"model": "q/keep", "pinned": True}, timeout=30
        )
        assert pinned.json() == {"status": "loaded", "model": "q/keep", "node": "n", "pinned": True}
        for name in ["q/x", "q/y", "q/x"]:
            ask(fleet, name)
        assert "q/keep" in fleet.models_on("n")
        unloaded = httpx.post(f"{fleet.url}/admin/models/unload", json={"model": "q/keep"}, timeout=30)
        assert unloaded.json()["nodes"] == ["n"]
        assert "q/keep" not in fleet.models_on("n")


def test_minimum_residency_keeps_two_hot_models_from_thrashing_one_slot():
    catalogue = {"models": [model("r/one", 700), model("r/two", 700)]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR}},
        catalogue,
        eviction={"min_residency_s": 30},
        lifecycle={"wait_timeout_s": 1},
    ) as fleet:
        ask(fleet, "r/one")
        with pytest.raises(openai.APIStatusError) as err:
            ask(fleet, "r/two")
        assert err.value.status_code == 503
        assert err.value.response.headers["retry-after"]
        assert "loaded too recently" in err.value.message
        assert fleet.models_on("n") == {"r/one"}
        assert scrape(fleet.metrics_url, "helexa_gateway_rejected_no_room_total", model="r/two") == 1


def test_two_cold_models_wanted_at_once_on_one_slot_load_once_each():
    """A load that finishes hands its replica to the requests that waited for it: the other model's
    placement, already waiting on the node, must not evict it before they reach it (they used to
    reload it, evicting the other in turn, and neither ever answered)."""
    catalogue = {"models": [model("t/one", 700), model("t/two", 700)]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue, lifecycle={"wait_timeout_s": 20}
    ) as fleet:

        async def together():
            async with httpx.AsyncClient(timeout=20) as http:
                return await asyncio.gather(
                    *(
                        http.post(
                            f"{fleet.url}/v1/chat/completions",
                            json={"model": name, "messages": [{"role": "user", "content": name}]},
                        )
                        for name in ["t/one", "t/two"] * 3
                    )
                )

        replies = asyncio.run(together())
        assert [r.status_code for r in replies] == [200] * 6
        assert [r.json()["choices"][0]["message"]["content"] for r in replies] == ["t/one", "t/two"] * 3
        for name in ("t/one", "t/two"):
            assert scrape(fleet.metrics_url, "helexa_gateway_load_duration_seconds_count", model=name) == 1
        assert fleet.gateway.fleet.nodes["n"].replicas["t/two"].claimed == 0


def test_waiting_for_room_succeeds_when_room_comes():
    catalogue = {"models": [model("w/one", 700), model("w/two", 700)]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR, "harness": {"echo": {"tokens_per_second": 40}}}},
        catalogue,
        lifecycle={"wait_timeout_s": 20},
    ) as fleet:
        ask(fleet, "w/one", max_tokens=1)
        thread = threading.Thread(target=lambda: list(ask(fleet, "w/one", "w " * 30, stream=True)))
        thread.start()
        fleet.wait(lambda: fleet.gateway.fleet.nodes["n"].replicas["w/one"].in_flight == 1)
        started = time.monotonic()
        assert ask(fleet, "w/two", "finally").choices[0].message.content == "finally"
        assert time.monotonic() - started > 0.3  # it waited for the stream to end, then evicted
        thread.join()
        assert fleet.models_on("n") == {"w/two"}


def test_a_model_too_big_for_every_neuron_is_a_clear_404():
    catalogue = {"models": [model("big/one", 50_000)]}
    with running_fleet({"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue) as fleet:
        with pytest.raises(openai.NotFoundError) as err:
            ask(fleet, "big/one")
        assert "needs 50000 MB" in err.value.message
        assert "n: " in err.value.message


def test_a_load_failure_falls_back_to_the_next_neuron():
    catalogue = {"models": [model("f/model")]}
    neurons = {
        "bad": {
            "simulated_devices": [{"name": "s", "memory_mb": 2000}],
            "harness": {"echo": {"tokens_per_second": 0, "fail_load": "disk on fire"}},
        },
        "good": {"simulated_devices": [{"name": "s", "memory_mb": 1000}]},
    }
    with running_fleet(neurons, catalogue) as fleet:
        assert ask(fleet, "f/model").choices[0].message.content == "hi"  # "bad" ranks first: more memory
        assert fleet.models_on("good") == {"f/model"}
        assert (
            scrape(
                fleet.metrics_url,
                "helexa_gateway_load_duration_seconds_count",
                model="f/model",
                node="bad",
                outcome="failed",
            )
            == 1
        )


def test_a_killed_neuron_loses_its_models_and_they_load_elsewhere():
    catalogue = {"models": [model("k/model")]}
    neurons = {
        "first": {"simulated_devices": [{"name": "s", "memory_mb": 2000}]},
        "second": {"simulated_devices": ONE_SLOT_PAIR},
    }
    with running_fleet(neurons, catalogue, poller={"interval_s": 0.1, "unhealthy_after": 2}) as fleet:
        ask(fleet, "k/model")
        assert fleet.models_on("first") == {"k/model"}
        fleet.kill("first")
        fleet.wait(lambda: not fleet.gateway.fleet.nodes["first"].healthy)
        assert ask(fleet, "k/model", "moved").choices[0].message.content == "moved"
        assert fleet.models_on("second") == {"k/model"}


def test_only_the_neuron_that_meets_min_device_vram_takes_it():
    catalogue = {"models": [model("v/model", 300, min_device_vram_mb=1500)]}
    neurons = {
        "small": {"simulated_devices": [{"name": "s", "memory_mb": 1000}] * 2},
        "large": {"simulated_devices": [{"name": "l", "memory_mb": 2000}]},
    }
    with running_fleet(neurons, catalogue) as fleet:
        ask(fleet, "v/model")
        assert fleet.models_on("large") == {"v/model"}
        listed = {m["id"]: m for m in httpx.get(f"{fleet.url}/v1/models").json()["data"]}
        assert listed["v/model"]["feasible_on"] == ["large"]


def test_status_shows_loads_in_progress():
    catalogue = {"models": [model("s/slow")]}
    catalogue["models"][0]["options"]["load_seconds"] = 1.0
    with running_fleet({"n": {"simulated_devices": ONE_SLOT_PAIR}}, catalogue) as fleet:
        thread = threading.Thread(target=lambda: ask(fleet, "s/slow"))
        thread.start()
        fleet.wait(lambda: fleet.gateway.lifecycle.loads)
        view = httpx.get(f"{fleet.url}/admin/fleet").json()
        assert view["loading"] == ["s/slow"]
        assert view["waiting"] == {"s/slow": 1}
        thread.join()
        load(fleet, "n", "s/slow")


def test_priority_never_lets_a_model_displace_a_more_important_one():
    catalogue = {"models": [model("p/high", 700, priority=10), model("p/low", 700, priority=1)]}
    with running_fleet(
        {"n": {"simulated_devices": ONE_SLOT_PAIR}},
        catalogue,
        eviction={"strategy": "priority"},
        lifecycle={"wait_timeout_s": 1},
    ) as fleet:
        ask(fleet, "p/high")
        with pytest.raises(openai.APIStatusError) as err:
            ask(fleet, "p/low")
        assert err.value.status_code == 503
        assert "kept by the eviction strategy" in err.value.message
        assert fleet.models_on("n") == {"p/high"}
        # The other way round is allowed: the important model displaces the unimportant one.
        unloaded = httpx.post(f"{fleet.url}/admin/models/unload", json={"model": "p/high"}, timeout=30)
        assert unloaded.status_code == 200
        ask(fleet, "p/low")
        ask(fleet, "p/high")
        assert fleet.models_on("n") == {"p/high"}
