"""The gateway's lean HTTP client against a real socket server that closes idle keep-alive
connections, as a neuron does after its keep-alive timeout."""

from __future__ import annotations

import asyncio

from helexa.gateway.transport import LeanTransport

IDLE_TIMEOUT_S = 0.3


async def keep_alive_server() -> tuple[asyncio.Server, int]:
    """Answers ``ok`` to each request; closes a connection idle for IDLE_TIMEOUT_S."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_idle_connections_the_neuron_closed_do_not_pile_up():
    async def scenario() -> list[bool]:
        server, port = await keep_alive_server()
        transport = LeanTransport()
        address = ("127.0.0.1", port)

        async def get() -> bytes:
            answer = await transport.request(address, b"GET", b"/", [], b"", 1.0, 1.0)
            body = await answer.read()
            answer.close()
            return body

        assert await asyncio.gather(*(get() for _ in range(8))) == [b"ok"] * 8
        assert len(transport.idle[address]) == 8  # a burst leaves eight kept-alive connections
        # Then a trickle that only ever reuses the top one; the server closes the seven below.
        deadline = asyncio.get_running_loop().time() + 2 * LeanTransport.SWEEP_EVERY_S + 0.5
        while asyncio.get_running_loop().time() < deadline:
            assert await get() == b"ok"
            await asyncio.sleep(0.05)
        usable = [connection.usable for connection in transport.idle[address]]
        await transport.aclose()
        server.close()
        return usable

    assert asyncio.run(scenario()) == [True]  # the closed ones were dropped, and their sockets closed
