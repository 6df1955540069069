"""A batch task's blocking work (reading its input, writing its result files) runs on a
thread while its batch lease is kept alive, and gives up when the lease is lost."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from batchd.store.records import BatchRecord, Lease
from batchd.worker.context import WorkerContext

T = TypeVar("T")


class Abandoned(Exception):
    """The batch task lost its lease or was cancelled while it ran."""


@dataclass
class _LeaseKeeper:
    """Renews a batch lease in the background; `stop` is set when the task must give up."""

    ctx: WorkerContext
    batch: BatchRecord
    lease: Lease
    stop: threading.Event
    abandon_on_stop_reason: bool

    async def run(self) -> None:
        settings = self.ctx.settings
        while not self.stop.is_set():
            await asyncio.sleep(settings.heartbeat_seconds)
            current = await self.ctx.store.renew_batch_lease(
                self.batch.id, self.lease, now=self.ctx.clock.now(),
                lease_seconds=settings.lease_seconds,
            )
            if current is None or (self.abandon_on_stop_reason and current.stop_reason):
                self.stop.set()


async def with_lease(ctx: WorkerContext, batch: BatchRecord, lease: Lease,
                     work: Callable[[threading.Event], T], *,
                     abandon_on_stop_reason: bool) -> T:
    """Run blocking `work` on a thread while its lease is kept alive; `work` watches the
    event it is given and gives up (raising `Abandoned`) when the lease is lost, or, with
    `abandon_on_stop_reason`, once the batch is cancelled or expires meanwhile."""
    stop = threading.Event()
    keeper = _LeaseKeeper(ctx, batch, lease, stop, abandon_on_stop_reason)
    beat = asyncio.create_task(keeper.run(), name=f"lease:{batch.id}")
    try:
        return await asyncio.to_thread(work, stop)
    finally:
        stop.set()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
