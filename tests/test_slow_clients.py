"""Clients that connect and then send nothing, or trickle their headers a byte at a time, cannot
crowd out real ones: with 2,000 idle and 200 trickling connections open on a listener, a normal
client is still answered in under a second, and the idle and trickling ones are closed once
``[http] header_timeout_s`` has passed. Run against real ``helexa`` processes over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time

import httpx
import openai
import pytest
from fleet import helexa_role, scripted

from helexa.testing import free_port

IDLE = 2000
TRICKLING = 200
HEADER_TIMEOUT_S = 2.0
KEEPALIVE_S = 3 * HEADER_TIMEOUT_S
LIMITS = f"[http]\nheader_timeout_s = {HEADER_TIMEOUT_S}\nkeepalive_timeout_s = {KEEPALIVE_S}\n"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def enough_open_files():
    """This process holds the client ends and the server the other ends: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * (IDLE + TRICKLING) + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def crowd(port: int) -> tuple[list[asyncio.StreamReader], list[asyncio.Task]]:
    """Open the idle connections (in batches, within the listen backlog) and start the tricklers."""
    idle = []
    for start in range(0, IDLE, 250):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(250, IDLE - start)))
        )
        idle += [reader for reader, _ in opened]

    async def trickle() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        try:
            for byte in head * 10:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    break
            await reader.read()
        except ConnectionError:
            pass
        return time.monotonic() - started

    tricklers = [asyncio.create_task(trickle()) for _ in range(TRICKLING)]
    return idle, tricklers


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def kept_alive(port: int) -> None:
    """An idle kept-alive connection lives for keepalive_timeout_s, not header_timeout_s (clients that
    reuse it must not be raced), but the headers of its next request are still due in time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert head.startswith("http/1.1 200")
    length = next(int(line.split(":")[1]) for line in head.splitlines() if line.startswith("content-length"))
    await reader.readexactly(length)  # all of it: at_eof() below is only true on an empty buffer
    await asyncio.sleep(HEADER_TIMEOUT_S + 1.0)
    assert not reader.at_eof(), "an idle keep-alive connection was closed at the header deadline"
    began = time.monotonic()
    with contextlib.suppress(ConnectionError):
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n" * 10:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof():
                break
    assert time.monotonic() - began < HEADER_TIMEOUT_S + 1.5, "a kept-alive connection trickled its headers"
    writer.close()


async def siege(url: str, port: int, ask) -> None:
    await ask(url)  # the client's own first-use costs (TLS context, pools) are not the server's
    keeper = asyncio.create_task(kept_alive(port))
    started = time.monotonic()
    idle, tricklers = await crowd(port)
    await asyncio.sleep(0.3)  # every trickler is mid-headers now
    waits = []
    for _ in range(5):
        began = time.monotonic()
        await ask(url)
        waits.append(time.monotonic() - began)
    assert max(waits) < 1.0, f"a normal client waited behind the idle connections: {waits}"
    # Every idle connection is closed once the header deadline has passed (give the loop a second).
    deadline = HEADER_TIMEOUT_S + 3.0 - (time.monotonic() - started)
    closed = await asyncio.wait_for(asyncio.gather(*(closed_by_server(r) for r in idle)), max(deadline, 0.5))
    assert all(closed)
    lasted = await asyncio.wait_for(asyncio.gather(*tricklers), HEADER_TIMEOUT_S + 3.0)
    assert max(lasted) < HEADER_TIMEOUT_S + 2.0, "a trickling client was allowed to hold its connection"
    await keeper
    await ask(url)  # and the listener still serves


CLIENTS: dict[str, openai.AsyncOpenAI] = {}


async def chat(url: str) -> None:
    """A normal client, through the openai SDK; a fresh connection each time (not one kept from before)."""
    if url not in CLIENTS:
        CLIENTS[url] = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    answer = await CLIENTS[url].chat.completions.create(
        model="script/ok", messages=[{"role": "user", "content": "x"}], extra_headers={"Connection": "close"}
    )
    assert answer.choices[0].message.content == "one two three four"


async def models(url: str) -> None:
    async with httpx.AsyncClient() as http:
        assert (
            await http.get(f"{url}/models", timeout=5, headers={"Connection": "close"})
        ).status_code == 200


def test_a_gateway_under_idle_and_trickling_connections_serves_and_sheds_them(tmp_path):
    port = free_port()
    with scripted(1) as neurons:
        config = (
            f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
            f'catalogue = "none.toml"\n{LIMITS}'
            f'[[neurons]]\nname = "s"\nendpoint = "{neurons[0][1]}"\n'
        )
        with helexa_role("gateway", config, tmp_path) as url:
            asyncio.run(siege(url, port, chat))


def test_a_neuron_under_idle_and_trickling_connections_serves_and_sheds_them(tmp_path):
    port = free_port()
    config = (
        f'[neuron]\nlisten = "127.0.0.1:{port}"\ndefault_harness = "echo"\n{LIMITS}'
        '[[simulated_devices]]\nname = "s"\nmemory_mb = 1000\n'
    )
    # The echo harness is enough; the torch harness would only slow the start.
    with helexa_role("neuron", config, tmp_path, env={"HELEXA_DISABLE_PLUGINS": "torch"}) as url:
        asyncio.run(siege(url, port, models))
