"""The n choices of one request: their generations, read side by side, and their log-probabilities
in OpenAI's two shapes (chat's ``content`` list, completions' parallel arrays)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from helexa.neuron.harness import TokenLogprob

T = TypeVar("T")
_END = object()


class Choices(list):
    """The generations of one request's choices; closing it closes every one."""

    async def aclose(self) -> None:
        for generation in self:
            await generation.aclose()


async def interleaved(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams as each produces them, tagged with the stream's index.

    One stream is read directly. Several are read by tasks; when the reader stops (or one
    stream fails) the rest are cancelled, which closes their generations.
    """
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item, None))
        except Exception as exc:
            await queue.put((index, None, exc))
        finally:
            await queue.put((index, _END, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                live -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion (or of one chunk)."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top],
            }
            for e in entries
        ]
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of a text completion; ``offset`` is where the first token's text starts."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }
