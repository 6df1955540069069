"""The SQL core of the metadata store: engine, migrations, one-writer transactions, and the
helpers every group of verbs shares.

Every write that changes who owns a piece of work is *fenced*: it names the (owner, generation)
lease it holds, and zero rows updated means the work was taken away and the caller must stop.
Each write transaction opens with its write statement, so SQLite takes the write lock first and
never hits a stale-snapshot upgrade failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from batchd.store.records import (
    BatchStatus,
    ChunkProgress,
)

_MIGRATIONS = str(Path(__file__).with_name("migrations"))
ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING,
           BatchStatus.CANCELLING)


P = ParamSpec("P")
R = TypeVar("R")


def shielded(verb: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let a write finish (commit or roll back) even if its caller is cancelled: a
    transaction cut off half-way could leave its pooled connection holding SQLite's write
    lock, and every later writer would wait on it."""

    @functools.wraps(verb)
    async def shielded(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.shield(verb(*args, **kwargs))

    return shielded


class QuotaExceeded(Exception):
    """Enqueuing a batch would take an owner past its token limit for a model."""

    def __init__(self, *, model: str, enqueued: int, requested: int, limit: int) -> None:
        super().__init__(model)
        self.model, self.enqueued, self.requested, self.limit = (model, enqueued, requested,
                                                                 limit)


class ActiveBatchLimit(Exception):
    """Creating a batch would give its owner more unfinished batches than allowed."""

    def __init__(self, *, active: int, limit: int) -> None:
        super().__init__(active)
        self.active, self.limit = active, limit


class _Sequencer:
    """Strictly increasing creation numbers (microseconds, bumped on ties) for stable paging."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


def _set_sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable against process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SqlStore:
    """Connection handling shared by the store's groups of verbs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _set_sqlite_pragmas)
        self._seq = _Sequencer()
        # SQLite allows one writer at a time. Writers of this process queue here instead of
        # spinning in SQLite's busy handler (which sleeps in steps of up to 100 ms); other
        # processes are still kept apart by SQLite's own lock.
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._engine.begin() as conn:
            yield conn

    @shielded
    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent, safe on every start)."""

        def upgrade(conn: Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", _MIGRATIONS)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self._write() as conn:
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self._engine.dispose()


def owned(query: Any, column: Any, owner: str | None) -> Any:
    """Restrict a query to one owner's rows; `None` (an admin) sees every owner's."""
    return query if owner is None else query.where(column == owner)


def as_row(record: object) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}  # type: ignore[arg-type]


def live_values(progress: ChunkProgress) -> dict[str, int]:
    return dataclasses.asdict(progress)


def done_values(progress: ChunkProgress) -> dict[str, int]:
    return {"done_ok": progress.n_ok, "done_err": progress.n_err,
            "done_input_tokens": progress.input_tokens,
            "done_output_tokens": progress.output_tokens,
            "done_cached_tokens": progress.cached_tokens}

