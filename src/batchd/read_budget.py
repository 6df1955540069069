"""How much of the stored files' bytes the API may hold to answer reads that return lines
(`/admin/files/{id}/lines`, `/v1/batches/{id}/output`): each call a reservation of its own,
taken from one process-wide budget, so that many large reads at once cannot exhaust memory.
One owner may hold at most a quarter of it, so one tenant's reads cannot take every other
tenant's share (its further reads wait for its own, then get a 429)."""

from __future__ import annotations

import asyncio
import threading
import time

from batchd.errors import ServiceUnavailable, TooManyRequests

MIB = 1024 * 1024
# Blob stores read in pieces of about this size (S3's may be a little larger).
PIECE_BYTES = MIB
# All reads of this process together: the memory they may take, whatever the files hold.
PROCESS_BYTES = 256 * MIB
# What one owner's reads may hold together.
OWNER_SHARE = 4
# How long a read waits for room before it is answered 503 (or 429: its owner's share).
WAIT_SECONDS = 5.0


class ServerBusy(ServiceUnavailable):
    retry_after_seconds = 1


class ByteBudget:
    """A count of bytes that reads hold; thread-safe (pages are read on worker threads)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.share = total // OWNER_SHARE  # one owner's most, at the start of a read
        self._used = 0
        self._owners: dict[str, int] = {}
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

    def give(self, n: int, *, owner: str | None = None) -> None:
        with self._lock:
            self._used -= n
            if owner is not None:
                left = self._owners[owner] - n
                if left:
                    self._owners[owner] = left
                else:
                    del self._owners[owner]

    def _take_for(self, owner: str, n: int) -> bool:
        with self._lock:
            held = self._owners.get(owner, 0)
            # An owner holding nothing may always start one read (a budget smaller than
            # four pages would otherwise refuse everyone).
            if (held and held + n > self.share) or self._used + n > self.total:
                return False
            self._used += n
            self._owners[owner] = held + n
            return True

    def _over_share(self, owner: str, n: int) -> bool:
        with self._lock:
            held = self._owners.get(owner, 0)
            return bool(held) and held + n > self.share

    async def reserve(self, n: int, *, owner: str,
                      wait: float | None = None) -> Reservation:
        """`n` bytes for one call of `owner`'s, waiting up to `wait` seconds (WAIT_SECONDS)
        for other reads to finish: 429 `too_many_reads` if its owner's own reads hold its
        share all that time, else 503 `server_busy` if they do not."""
        deadline = time.monotonic() + (WAIT_SECONDS if wait is None else wait)
        while not self._take_for(owner, n):
            if time.monotonic() >= deadline:
                if self._over_share(owner, n):
                    raise TooManyRequests(
                        f"Your reads of file lines already hold {self.share // MIB} MiB, "
                        "the most one owner may; try again when one has finished.",
                        code="too_many_reads", headers={"retry-after": "1"})
                raise busy()
            await asyncio.sleep(0.05)
        return Reservation(self, n, owner=owner)


class Reservation:
    """Bytes one call may hold. `grow` asks for more without waiting (for one line longer
    than a page); `release` gives everything back, once."""

    def __init__(self, budget: ByteBudget, size: int, *, owner: str) -> None:
        self.budget = budget
        self.size = size  # of which `grown` is taken past the owner's share
        self.owner = owner
        self.grown = 0
        self._released = False

    def grow(self, n: int) -> bool:
        """More for one line longer than a page: from the process budget only (the line
        comes alone, and its owner's share could never hold it)."""
        if self.budget.try_take(n):
            self.size += n
            self.grown += n
            return True
        return False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.budget.give(self.size - self.grown, owner=self.owner)
            self.budget.give(self.grown)


def busy() -> ServerBusy:
    return ServerBusy("The server is holding as much file data for other reads as it may; "
                      "try again shortly.", code="server_busy")


READS = ByteBudget(PROCESS_BYTES)
