"""CPU-heavy request preparation (parsing a megabyte of JSON, a chat template over a megabyte
of messages, tokenizing it) off the event loop, fairly across owners.

A megabyte prompt takes a tokenizer a good part of a second. Done on the event loop, six of
them (all refused afterwards as too long) stalled every other request of the API, `/healthz`
included, for seconds. Here it runs on a few threads of its own (llama.cpp's tokenizer
releases the GIL), and each owner has at most one preparation running at a time: one
tenant's pile of huge prompts queues behind itself, while another tenant's next preparation
takes the next free thread.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import TypeVar

from batchd.errors import ServerError

T = TypeVar("T")

work_owner: ContextVar[str] = ContextVar("work_owner", default="")
"""Whose work this is (the caller's owner id), for shared resources that serve owners fairly
(preparation threads here, an engine's real-time slots): set where a request is
authenticated, so everything that request awaits carries it. Batch work runs with the
default, as one owner, since the worker already takes chunks fairly across owners."""
THREADS = 2  # more would only share this machine's cores with the decode threads


class Preparation:
    def __init__(self, *, threads: int = THREADS, name: str = "prepare") -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # owner → (lock, users)

    async def run(self, work: Callable[[], T]) -> T:
        """`work()`, on a preparation thread, after the calling owner's earlier ones. A
        caller that gives up returns at once; its owner's turn ends only when the thread
        has finished (a client that disconnects in a loop takes no more threads)."""
        owner = work_owner.get()
        lock, users = self._turns.get(owner) or (asyncio.Lock(), 0)
        self._turns[owner] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(owner)
            raise
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, contextvars.copy_context().run, work)
        except RuntimeError as exc:  # closed: the engine is being shut down or restarted
            lock.release()
            self._leave(owner)
            raise ServerError("The engine was shut down.", code="engine_error") from exc

        def turn_over(done: asyncio.Future[T]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: a caller that gave up leaves no warning
            lock.release()
            self._leave(owner)

        future.add_done_callback(turn_over)
        return await asyncio.shield(future)

    def _leave(self, owner: str) -> None:
        lock, users = self._turns[owner]
        if users == 1:
            del self._turns[owner]
        else:
            self._turns[owner] = (lock, users - 1)

    def close(self) -> None:
        """Refuse new work, drop what waits, and wait for what runs: an engine frees its
        model only after this, never under a thread still tokenizing with it."""
        self._pool.shutdown(wait=True, cancel_futures=True)
