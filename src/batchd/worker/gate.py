"""The worker's isolation door: batch requests run side by side, or one suspect group alone.

A suspect (a request that was in flight when a worker died) is re-run with nothing else of
this worker beside it, so that a second death can be charged to it and not to whatever else
was running. A request enters just before it calls its engine, holding its model's place
already, and never waits at the door while holding that place (it hands the place back and
waits for the door to open): a stalled model's queued requests do not keep the door shut.
Going alone closes the door to newcomers, waits for those inside to leave, and keeps it
closed until done. How many requests run at once is not decided here: each model's gate does
that (worker/capacity.py).
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

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        while not self._open.is_set():
            await self._open.wait()

    def enter(self) -> None:
        """Enter at once; only while `is_open` (the caller checked, with no await since).
        Every batch request passes here: plain calls, no context manager object."""
        assert self._open.is_set(), "the door is closed: wait_open() first"
        self._inside += 1
        if self._inside == 1:
            self._empty.clear()

    def leave(self) -> None:
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

