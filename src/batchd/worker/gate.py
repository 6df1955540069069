"""The worker's request gate: a bounded number of batch requests in flight at once, or one
suspect group alone.

A suspect (a request that was in flight when a worker died) is re-run with nothing else of
this worker beside it, so that a second death can be charged to it and not to whatever else
was running. Shared slots are a plain FIFO semaphore (cheap on the hot path); the exclusive
holder queues like everyone else, takes every slot as it frees, and one exclusive holder at a
time (two taking slots together could each wait forever for the other's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class RequestGate:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._slots = asyncio.Semaphore(capacity)
        self._exclusive = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One request's place among the worker's `capacity`."""
        async with self._slots:
            yield

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Every place at once: nothing else of this worker runs until the block ends."""
        async with self._exclusive:
            taken = 0
            try:
                for _ in range(self.capacity):
                    await self._slots.acquire()
                    taken += 1
                yield
            finally:
                for _ in range(taken):
                    self._slots.release()
