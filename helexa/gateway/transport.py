"""A lean HTTP/1.1 client for the gateway's proxied requests (and an httpx transport on top of it).

httpx's default pool (httpcore) checks every pooled connection's socket on every
request, and httpx itself parses URLs and builds models per request; at a few
hundred requests per second that costs more than the rest of the proxy together.
`LeanTransport` keeps a plain stack of idle keep-alive connections per neuron,
writes requests directly and parses answers with httptools (which uvicorn already
brings), streaming body chunks as they arrive. The proxy uses `LeanTransport.request`
directly; control calls go through httpx with this same transport underneath.
Closing an unfinished answer closes its connection, so the neuron sees the
disconnect and aborts the sequence. Idle connections the neuron has closed (after its
keep-alive timeout, or a restart) are closed here too, at most a second later on the next
request (the poller sends one every interval): a stack only pops its top, and what lay
below would otherwise sit in CLOSE_WAIT, holding a descriptor each, until traffic reached it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httptools
import httpx

READ_SIZE = 65536
Address = tuple[str, int]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()

    async def read(self, timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("no data from the neuron in time") from None
        except (ConnectionError, OSError) as exc:
            self.close()
            raise httpx.ReadError(str(exc)) from None


class Answer:
    """One response: status and headers at once, the body as it arrives."""

    def __init__(
        self, transport: LeanTransport, address: Address, connection: _Connection, read_timeout: float | None
    ) -> None:
        self.transport = transport
        self.address = address
        self.connection: _Connection | None = connection
        self.read_timeout = read_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.pending: list[bytes] = []

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.status = self.parser.get_status_code()
        # Asked here: llhttp forgets it once the message is complete (small answers come in one read).
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.pending.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    async def _feed(self) -> None:
        assert self.connection is not None
        data = await self.connection.read(self.read_timeout)
        if not data:
            self._drop()
            raise httpx.RemoteProtocolError("the neuron closed the connection mid-answer")
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._drop()
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive."""
        while True:
            if self.pending:
                pending, self.pending = self.pending, []
                for chunk in pending:
                    yield chunk
            if self.done:
                self._release()
                return
            await self._feed()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def _release(self) -> None:
        if self.connection is not None:
            pool = self.transport.idle.setdefault(self.address, [])
            if self.keep_alive and self.connection.usable and len(pool) < self.transport.max_idle:
                pool.append(self.connection)
            else:
                self.connection.close()
            self.connection = None

    def _drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self) -> None:
        if self.done:
            self._release()
        else:
            self._drop()  # unfinished: the neuron must see the disconnect

    async def aclose(self) -> None:
        self.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.answer.chunks():
            yield chunk

    async def aclose(self) -> None:
        await self.answer.aclose()


class LeanTransport(httpx.AsyncBaseTransport):
    SWEEP_EVERY_S = 1.0

    def __init__(self, max_idle: int = 256) -> None:
        self.idle: dict[Address, list[_Connection]] = {}
        self.max_idle = max_idle
        self.swept = 0.0

    def _sweep(self) -> None:
        """Close the idle connections whose other end has gone."""
        for address, pool in self.idle.items():
            for connection in pool:
                if not connection.usable:
                    connection.close()
            self.idle[address] = [connection for connection in pool if connection.usable]

    async def _connect(self, address: Address, timeout: float | None) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        if now - self.swept > self.SWEEP_EVERY_S:
            self.swept = now
            self._sweep()
        pool = self.idle.get(address)
        while pool:
            connection = pool.pop()
            if connection.usable:
                return connection, True
            connection.close()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*address)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {address[0]}:{address[1]} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {address[0]}:{address[1]}: {exc}") from None
        return _Connection(reader, writer), False

    async def request(
        self,
        address: Address,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Answer:
        """Send a request and return once the answer's head has arrived."""
        lines = [method + b" " + target + b" HTTP/1.1", b"host: " + address[0].encode()]
        lines += [
            k + b": " + v for k, v in headers if k.lower() not in (b"content-length", b"connection", b"host")
        ]
        lines.append(b"content-length: " + str(len(body)).encode())
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        for attempt in (1, 2):
            connection, reused = await self._connect(address, connect_timeout)
            answer = Answer(self, address, connection, read_timeout)
            try:
                connection.writer.write(head + body)
                while not answer.head_done:
                    await answer._feed()
            except (httpx.RemoteProtocolError, httpx.ReadError):
                connection.close()
                if reused and attempt == 1 and not answer.headers:
                    continue  # a kept-alive connection the neuron had already closed: try a fresh one
                raise
            except BaseException:
                connection.close()  # given up on (the client left, or a timeout): the neuron must see it
                raise
            return answer
        raise AssertionError("unreachable")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol("the lean transport speaks plain http only")
        timeouts = request.extensions.get("timeout", {})
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        answer = await self.request(
            (url.host, url.port or 80),
            request.method.encode(),
            url.raw_path,
            list(request.headers.raw),
            body,
            timeouts.get("connect"),
            timeouts.get("read"),
        )
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=_Body(answer),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for pool in self.idle.values():
            for connection in pool:
                connection.close()
        self.idle.clear()
