"""The event loop batchd's long-running processes run on.

uvloop (libuv, in C) by default: the worker's per-request path is mostly event-loop work
(futures, callbacks, socket reads and writes), and uvloop does it for 8% less CPU a batch
request on the instant engine and less still on an upstream server's sockets (bench/). The
asyncio loop stays one setting away (`BATCHD_EVENT_LOOP=asyncio`) and is what `auto` falls
back to where uvloop is not installed (it has no Windows build). `serve` hands the same name
to uvicorn, whose loop choices these are."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

LoopName = Literal["auto", "uvloop", "asyncio"]


def loop_factory(name: LoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new loop of the named kind (`uvloop` fails if it is not installed; `auto` does not)."""
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], name: LoopName) -> T:
    """`asyncio.run(main)` on the named loop."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
