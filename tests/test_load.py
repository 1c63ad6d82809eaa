"""500 streams at once through a real gateway process to two real neuron processes with admission
limits: every stream is either complete and exact, or refused up front with 429 and Retry-After.
None is cut short, none is answered with anything else."""

from __future__ import annotations

import asyncio
import json
import resource

import httpx
import pytest
from fleet import helexa_role

from helexa.testing import free_port

STREAMS = 500
WORDS = " ".join(f"w{i}" for i in range(16))
NEURON = """[neuron]
listen = "127.0.0.1:{port}"
default_harness = "echo"
name = "{name}"
max_running = 100
max_queue = 50
[harness.echo]
tokens_per_second = 20
[[simulated_devices]]
name = "s"
memory_mb = 4000
[[default_models]]
model_id = "echo/shared"
"""

pytestmark = pytest.mark.slow


async def one_stream(http: httpx.AsyncClient, url: str) -> str:
    """``complete``, ``refused``, or what went wrong."""
    body = {"model": "echo/shared", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code == 429:
            await response.aread()
            if not response.headers.get("retry-after"):
                return "429 without Retry-After"
            return "refused" if response.json()["error"]["type"] else "429 without an OpenAI error"
        if response.status_code != 200:
            return f"status {response.status_code}: {(await response.aread())[:200]!r}"
        text, finish, done = [], None, False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return f"error in the stream: {event['error']['message']}"
            for choice in event["choices"]:
                text.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
    if not done or finish != "stop":
        return f"truncated (finish {finish}, [DONE] {done})"
    return "complete" if "".join(text) == WORDS else f"inexact: {''.join(text)!r}"


async def burst(url: str) -> list[str]:
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(*(one_stream(http, url) for _ in range(STREAMS)))


def test_500_concurrent_streams_are_complete_and_exact_or_refused_up_front(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * STREAMS:
        pytest.skip(f"needs {4 * STREAMS} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * STREAMS), hard))
    echo_only = {"HELEXA_DISABLE_PLUGINS": "torch"}
    ports = {"a": free_port(), "b": free_port()}
    gateway = (
        f'[gateway]\nlisten = "127.0.0.1:{free_port()}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
        'catalogue = "none.toml"\n[poller]\ninterval_s = 0.5\n'
        + "".join(f'[[neurons]]\nname = "{n}"\nendpoint = "http://127.0.0.1:{p}"\n' for n, p in ports.items())
    )
    with (
        helexa_role("neuron", NEURON.format(port=ports["a"], name="a"), tmp_path, "/models", env=echo_only),
        helexa_role("neuron", NEURON.format(port=ports["b"], name="b"), tmp_path, "/models", env=echo_only),
        helexa_role("gateway", gateway, tmp_path) as url,
    ):
        listed = {}
        while len(listed.get("locations", [])) < 2:  # the gateway has seen the model on both neurons
            models = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
            listed = next((m for m in models if m["id"] == "echo/shared"), {})
        outcomes = asyncio.run(burst(url))
        tally = {kind: outcomes.count(kind) for kind in set(outcomes)}
        assert set(tally) == {"complete", "refused"}, tally
        assert tally["complete"] >= 300  # both neurons' slots and queues were used
        # ...and after the burst, the fleet serves as before
        assert asyncio.run(burst_of_one(url)) == "complete"


async def burst_of_one(url: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        return await one_stream(http, url)
