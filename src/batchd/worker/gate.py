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
        # Set while `alone()` waits for those inside to leave: resolved by the last to leave.
        self._drained: asyncio.Future[None] | None = None
        # Plain attributes, read and kept by every batch request: no Event call per request
        # (`_opened` is only for those who wait while it is shut).
        self.is_open = True
        self._opened = asyncio.Event()
        self._opened.set()
        self._alone = asyncio.Lock()

    async def wait_open(self) -> None:
        while not self.is_open:
            await self._opened.wait()

    def enter(self) -> None:
        """Enter at once; only while `is_open` (the caller checked, with no await since).
        Every batch request passes here: plain calls, no context manager object."""
        assert self.is_open, "the door is closed: wait_open() first"
        self._inside += 1

    def leave(self) -> None:
        self._inside -= 1
        drained = self._drained
        if not self._inside and drained is not None and not drained.done():
            drained.set_result(None)

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Nothing else of this worker runs until the block ends."""
        async with self._alone:
            self.is_open = False
            self._opened.clear()
            try:
                while self._inside:
                    self._drained = asyncio.get_running_loop().create_future()
                    try:
                        await self._drained
                    finally:
                        self._drained = None
                yield
            finally:
                self.is_open = True
                self._opened.set()
