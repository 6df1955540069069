"""How much of the stored files' bytes the API may hold to answer reads that return lines
(`/admin/files/{id}/lines`, `/v1/batches/{id}/output`): each call a reservation of its own,
taken from one process-wide budget, so that many large reads at once cannot exhaust memory."""

from __future__ import annotations

import asyncio
import threading
import time

from batchd.errors import ServiceUnavailable

MIB = 1024 * 1024
# Blob stores read in pieces of about this size (S3's may be a little larger).
PIECE_BYTES = MIB
# All reads of this process together: the memory they may take, whatever the files hold.
PROCESS_BYTES = 256 * MIB
# How long a read waits for room before it is answered 503.
WAIT_SECONDS = 5.0


class ServerBusy(ServiceUnavailable):
    retry_after_seconds = 1


class ByteBudget:
    """A count of bytes that reads hold; thread-safe (pages are read on worker threads)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.total:
                return False
            self._used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self._used -= n

    async def reserve(self, n: int, *, wait: float | None = None) -> Reservation:
        """`n` bytes for one call, waiting up to `wait` seconds (WAIT_SECONDS) for other
        reads to finish; 503 `server_busy` if they do not."""
        deadline = time.monotonic() + (WAIT_SECONDS if wait is None else wait)
        while not self.try_take(n):
            if time.monotonic() >= deadline:
                raise busy()
            await asyncio.sleep(0.05)
        return Reservation(self, n)


class Reservation:
    """Bytes one call may hold. `grow` asks for more without waiting (for one line longer
    than a page); `release` gives everything back, once."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self.budget = budget
        self.size = size
        self._released = False

    def grow(self, n: int) -> bool:
        if self.budget.try_take(n):
            self.size += n
            return True
        return False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.budget.give(self.size)


def busy() -> ServerBusy:
    return ServerBusy("The server is holding as much file data for other reads as it may; "
                      "try again shortly.", code="server_busy")


READS = ByteBudget(PROCESS_BYTES)
