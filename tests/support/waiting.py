"""Waiting for a condition instead of sleeping and hoping: a fixed sleep is too short on a
slow host and wasted on a fast one, and an assert after it may pass before anything happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], *, what: str, timeout: float = 30.0,
               every: float = 0.01) -> T:
    """`condition()`'s first true value, tried every `every` seconds; an AssertionError that
    says `what` was awaited if none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout:.0f} s (last: {value!r})")
        time.sleep(every)
    return value


async def eventually_async(condition: Callable[[], T | Awaitable[T]], *, what: str,
                           timeout: float = 30.0, every: float = 0.01) -> T:
    """`eventually` for a test on the event loop: it sleeps without blocking the loop (the
    code it waits for runs there), and `condition` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        value: T = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout:.0f} s (last: {value!r})")
        await asyncio.sleep(every)
