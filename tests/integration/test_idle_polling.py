"""An idle worker looks for work less and less often, and at once again when woken."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from batchd.errors import ServiceUnavailable
from tests.support.harness import Harness


async def test_an_idle_worker_polls_less_and_less_often_until_woken(harness: Harness) -> None:
    worker = harness.worker
    settings = worker.ctx.settings
    settings.poll_seconds, settings.poll_max_seconds = 0.02, 0.16
    looks: list[float] = []
    finds = 0  # how many of the next looks find work

    async def step() -> bool:
        nonlocal finds
        looks.append(time.monotonic())
        found, finds = finds > 0, max(0, finds - 1)
        return found

    def gaps(since: int) -> list[float]:
        return [b - a for a, b in itertools.pairwise(looks[since:])]

    polling = asyncio.create_task(worker._poll("probe", step))
    try:
        await asyncio.sleep(0.8)
        # Doubling from poll_seconds while nothing is found, then held at the cap.
        seen = gaps(0)
        for gap, expected in zip(seen, [0.02, 0.04, 0.08, 0.16, 0.16], strict=False):
            assert expected * 0.9 <= gap <= expected + 0.15, seen
        assert len(seen) >= 5 and max(seen) <= 0.16 + 0.15, seen

        # A wake-up looks at once and starts again from poll_seconds.
        await asyncio.sleep(0.05)
        before = len(looks)
        woken = time.monotonic()
        worker.wake("probe")
        await asyncio.sleep(0.1)
        assert looks[before] - woken < 0.05, looks[before:]
        assert gaps(before)[0] <= 0.02 + 0.1 and gaps(before)[0] < 0.16 * 0.9

        # Work found is looked for again at once, and the interval starts over.
        await asyncio.sleep(0.4)  # back at the cap
        finds, before = 2, len(looks)
        worker.wake("probe")
        await asyncio.sleep(0.1)
        found = gaps(before)
        assert found[0] < 0.01 and found[1] < 0.01, found  # two finds: no sleep between
        assert found[2] < 0.16 * 0.9, found
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling


async def test_a_store_outage_keeps_its_own_waits_not_the_idle_ones(harness: Harness) -> None:
    """While the store is out (and for a while after, as the worker's outage state says), a
    loop does not back off as if idle: the outage's own growing waits apply, as before."""
    worker = harness.worker
    settings = worker.ctx.settings
    settings.poll_seconds, settings.poll_max_seconds = 0.02, 0.32
    looks: list[float] = []

    async def step() -> bool:
        looks.append(time.monotonic())
        if len(looks) == 1:
            raise ServiceUnavailable("the store is out")
        return False

    polling = asyncio.create_task(worker._poll("probe", step))
    try:
        await asyncio.sleep(0.5)
        gaps = [b - a for a, b in itertools.pairwise(looks[1:])]
        # Idle backoff would give 0.04, 0.08, 0.16, 0.32 here.
        assert len(gaps) >= 4 and max(gaps[:4]) < 0.02 + 0.1, gaps
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
