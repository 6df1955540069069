"""The lanes' watchdog times requests out like asyncio.timeout, without a timer per request."""

from __future__ import annotations

import asyncio
import time

import pytest

from batchd.worker.watchdog import Watchdog
from tests.support.waiting import eventually_async


async def _lane(dog: Watchdog, calls: list[float]) -> list[str]:
    """Runs one guarded sleep per entry of `calls` and says how each ended."""
    guard = dog.guard()
    seen = []
    try:
        for seconds in calls:
            try:
                async with guard:
                    await asyncio.sleep(seconds)
                seen.append("done")
            except TimeoutError:
                seen.append("timeout")
    finally:
        dog.release(guard)
    return seen


async def test_an_overrunning_request_times_out_and_the_lane_goes_on() -> None:
    dog = Watchdog(timeout=0.2)
    checker = asyncio.create_task(dog.run())
    started = time.monotonic()
    try:
        seen = await _lane(dog, [0.01, 30, 0.01])
    finally:
        checker.cancel()
    assert seen == ["done", "timeout", "done"]
    # At most timeout + one check period (a quarter of the timeout), plus scheduling slack.
    assert time.monotonic() - started < 0.2 + 0.05 + 0.5


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    dog = Watchdog(timeout=60)
    checker = asyncio.create_task(dog.run())
    lane = asyncio.create_task(_lane(dog, [30]))
    await eventually_async(lambda: dog._guards and dog._guards[0]._started is not None,
                           what="the lane is inside its guarded call")
    lane.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lane
    checker.cancel()


async def test_a_shutdown_cancel_during_a_timeout_is_not_swallowed() -> None:
    dog = Watchdog(timeout=0.1)
    lane = asyncio.create_task(_lane(dog, [30]))
    guard = await eventually_async(lambda: dog._guards and dog._guards[0],
                                   what="the lane has its guard")
    await eventually_async(lambda: guard.overran(time.monotonic()),
                           what="the lane's call has run past its timeout")
    guard.fire()
    lane.cancel()  # shutdown arrives before the lane wakes up
    with pytest.raises(asyncio.CancelledError):
        await lane
