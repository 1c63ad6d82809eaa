"""A minimal keep-alive HTTP/1.1 client for load generation: cheap enough not to be the bottleneck.

Supports POST with a JSON body and reads answers with content-length or chunked
transfer encoding, timing each chunk as it arrives (uvicorn sends one chunk per
write, so a streamed SSE event arrives as one chunk).
"""

from __future__ import annotations

import asyncio
import time


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, list[tuple[float, bytes]]]:
        """Send a POST; returns the status and the body chunks with their arrival times."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
        chunks: list[tuple[float, bytes]] = []
        if length is not None:
            chunks.append((time.perf_counter(), await self.reader.readexactly(length)))
        elif chunked:
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data = await self.reader.readexactly(size)
                chunks.append((time.perf_counter(), data))
                await self.reader.readline()
        return status, chunks

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
