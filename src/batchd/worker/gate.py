"""The worker's isolation gate: batch requests run side by side, or one suspect group alone.

A suspect (a request that was in flight when a worker died) is re-run with nothing else of
this worker beside it, so that a second death can be charged to it and not to whatever else
was running. Entering as usual costs a flag check and a counter on the hot path; going alone
closes the door to newcomers, waits for those inside to leave, and holds the door until done.
How many requests run at once is not decided here: each model's gate does that
(worker/capacity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class RequestGate:
    def __init__(self) -> None:
        self._inside = 0
        self._empty = asyncio.Event()
        self._empty.set()
        self._open = asyncio.Event()
        self._open.set()
        self._alone = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run beside the worker's other requests (waits while a suspect runs alone)."""
        while not self._open.is_set():
            await self._open.wait()
        self._inside += 1
        self._empty.clear()
        try:
            yield
        finally:
            self._inside -= 1
            if not self._inside:
                self._empty.set()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Nothing else of this worker runs until the block ends."""
        async with self._alone:
            self._open.clear()
            try:
                while self._inside:
                    await self._empty.wait()
                yield
            finally:
                self._open.set()
