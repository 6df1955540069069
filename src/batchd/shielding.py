"""Work that must finish even if whoever awaits it is cancelled (a write half done could
hold a lock or lose a saved part), without asyncio reporting its later failure as an ERROR
"Task exception was never retrieved"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
R = TypeVar("R")


async def finish_even_if_cancelled(work: Awaitable[R]) -> R:
    """`work`'s result. If the caller is cancelled meanwhile, `work` runs on to its end and a
    failure then is logged as a warning: nobody is left to handle it, but it is not hidden."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_abandoned_done)
        raise


def _abandoned_done(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("work whose caller had gone failed: %r", task.exception())


async def stop_then_wait(task: asyncio.Task[Any], stop: asyncio.Event, *,
                         within: float) -> None:
    """End a background loop that watches `stop`: set it, and give `task` up to `within`
    seconds to end by itself, so that a database call under way finishes (one cut off while
    it connects leaves its connection open); only then cancel it."""
    stop.set()
    try:
        async with asyncio.timeout(within):
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
