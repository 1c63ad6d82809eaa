"""Admission per model: a bounded number generating, a bounded queue, 429 beyond it.

`Admission.admit` decides at once (before any response header is sent) whether a
request may wait; the returned `Ticket` then waits for a generation slot.
"""

from __future__ import annotations

import asyncio

from helexa.errors import ApiError


class Ticket:
    """A request's place in a model's queue; released exactly once, however the request ends."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.state = "queued"  # queued | running | done

    async def __aenter__(self) -> Ticket:
        admission = self.admission
        async with admission.free:
            await admission.free.wait_for(lambda: admission.running < admission.max_running)
            admission.queued -= 1
            admission.running += 1
            self.state = "running"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release_async()

    async def release_async(self) -> None:
        was = self.release()
        if was == "running":
            async with self.admission.free:
                self.admission.free.notify()

    def release(self) -> str:
        was, self.state = self.state, "done"
        if was == "queued":
            self.admission.queued -= 1
        elif was == "running":
            self.admission.running -= 1
        return was


class Admission:
    def __init__(self, model_id: str, max_running: int, max_queue: int) -> None:
        self.model_id = model_id
        self.max_running = max_running
        self.max_queue = max_queue
        self.running = 0
        self.queued = 0
        self.free = asyncio.Condition()

    def admit(self) -> Ticket:
        """A ticket for a new request, or 429 when every slot and queue place is taken."""
        if self.running + self.queued >= self.max_running + self.max_queue:
            raise ApiError(
                429,
                f"model {self.model_id!r} is at capacity ({self.running} generating, {self.queued} queued); "
                "retry shortly",
                code="model_overloaded",
                retry_after=1,
            )
        self.queued += 1
        return Ticket(self)
