"""A client that leaves, streaming or not, OpenAI or Anthropic, stops the neuron's work within 100 ms."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fleet import load, running_fleet

from helexa.testing import scrape

SIM = [{"name": "s", "memory_mb": 4000}]


@pytest.fixture(scope="module")
def fleet():
    with running_fleet({"a": {"simulated_devices": SIM}}) as running:
        load(running, "a", "echo/slow", tokens_per_second=20)
        yield running


def body(stream: bool) -> dict:
    words = [{"role": "user", "content": "word " * 200}]
    return {"model": "echo/slow", "stream": stream, "max_tokens": 400, "messages": words}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
async def test_a_client_that_leaves_aborts_the_sequence_within_100ms(fleet, route, stream):
    neuron_url, neuron = fleet.neurons["a"]
    admission = neuron.manager.entries["echo/slow"].admission
    aborted = scrape(f"{neuron_url}/metrics", "helexa_neuron_aborted_sequences_total", model="echo/slow")

    async def ask() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            if not stream:
                await http.post(f"{fleet.url}{route}", json=body(stream))
                return
            async with http.stream("POST", f"{fleet.url}{route}", json=body(stream)) as response:
                async for _ in response.aiter_bytes():
                    pass

    request = asyncio.ensure_future(ask())
    deadline = time.monotonic() + 10
    while admission.running == 0:
        assert time.monotonic() < deadline, "the request never started generating"
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)  # it is generating: the client gives up
    request.cancel()
    left = time.monotonic()
    while admission.running:
        assert time.monotonic() - left < 0.1, "the neuron kept generating after the client left"
        await asyncio.sleep(0.005)
    after = scrape(f"{neuron_url}/metrics", "helexa_neuron_aborted_sequences_total", model="echo/slow")
    assert after == aborted + 1
    replica = fleet.gateway.fleet.nodes["a"].replicas["echo/slow"]
    assert replica.in_flight == 0  # the gateway gave its lease back too
