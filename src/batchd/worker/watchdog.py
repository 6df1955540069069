"""Request timeouts for a chunk's lanes, kept by one periodic check instead of a timer each.

`asyncio.timeout` arms and disarms a loop timer for every request: on an engine that answers in
microseconds that is a tenth of the worker's cost per request. A chunk's lanes run one request
at a time each, so it is enough that each lane notes when its current request started and that
one task looks every `period` seconds for a lane that has run past the timeout and cancels it.
The lane's guard turns that cancellation into `TimeoutError`, as `asyncio.timeout` does, so a
request runs at most `timeout + period` seconds.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType


class Guard:
    """One lane's timeout, reused for each of its requests: `async with guard: await call`."""

    __slots__ = ("_cancelling", "_fired", "_started", "_task", "timeout")

    def __init__(self, task: asyncio.Task[object], timeout: float) -> None:
        self.timeout = timeout
        self._task = task
        self._started: float | None = None
        self._fired = False
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._started = time.monotonic()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._started = None
        if self._fired:
            self._fired = False
            # Ours alone (no shutdown cancel on top): report a timeout, not a cancellation.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def overran(self, now: float) -> bool:
        started = self._started
        return not self._fired and started is not None and now - started > self.timeout

    def fire(self) -> None:
        self._fired = True
        self._cancelling = self._task.cancelling()
        self._task.cancel()


class Watchdog:
    """Cancels the requests of the guarded lanes that run longer than `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.period = min(1.0, timeout / 4)
        self._guards: list[Guard] = []

    def guard(self) -> Guard:
        """A guard for the calling task (a lane); `release` it when the lane ends."""
        task = asyncio.current_task()
        assert task is not None, "a guard belongs to a task"
        guard = Guard(task, self.timeout)
        self._guards.append(guard)
        return guard

    def release(self, guard: Guard) -> None:
        self._guards.remove(guard)

    async def run(self) -> None:
        """Check the lanes until cancelled."""
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            for guard in self._guards:
                if guard.overran(now):
                    guard.fire()
