"""The SQL core of the metadata store: one database's engine, migrations and one-writer
transactions, held by every part of the store (`keys`, `files`, `batches`, `work`, `webhooks`,
`uploads`), and the helpers those parts share.

Every write that changes who owns a piece of work is *fenced*: it names the (owner, generation)
lease it holds, and zero rows updated means the work was taken away and the caller must stop.
Each write transaction opens with its write statement, so SQLite takes the write lock first and
never hits a stale-snapshot upgrade failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, RowMapping, event, func, make_url, select, tuple_
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from batchd.shielding import finish_even_if_cancelled

log = logging.getLogger(__name__)
_MIGRATIONS = str(Path(__file__).with_name("migrations"))

P = ParamSpec("P")
R = TypeVar("R")


def shielded(verb: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let a write finish (commit or roll back) even if its caller is cancelled: a
    transaction cut off half-way could leave its pooled connection holding SQLite's write
    lock, and every later writer would wait on it."""

    @functools.wraps(verb)
    async def shielded(*args: P.args, **kwargs: P.kwargs) -> R:
        return await finish_even_if_cancelled(verb(*args, **kwargs))

    return shielded


# Creation order of files and batches on PostgreSQL (migration 0005).
_SEQUENCE = "batchd_seq"
# pg_advisory_xact_lock keys: (namespace, key) pairs keep batchd's locks apart from others'.
_MIGRATION_LOCK = 0x62617463  # "batc"
OWNER_LOCK_SPACE = 0x6F776E72  # "ownr"
WORK_CHANNEL = "batchd_work"  # LISTEN/NOTIFY channel: new or returned work
_POSTGRES_CONNECT_ARGS = {
    # A host cut off mid-transaction would hold its row locks until TCP gave up (hours):
    # the server ends such a session after a minute idle in a transaction.
    "server_settings": {"idle_in_transaction_session_timeout": "60000",
                        "application_name": "batchd"},
    "timeout": 10,  # seconds to connect
    "command_timeout": 60,
}


def _sqlite_driver() -> Any:
    """The DBAPI module SQLite's engines use (sqlite_driver.py): one trip to the connection's
    thread a statement. Imported here, so that only SQLite's processes pay its import."""
    from batchd.store import sqlite_driver

    return sqlite_driver.dbapi()


def _set_sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; NORMAL sync is durable against process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_engine(url: str, *, driver: Literal["one-trip", "sqlalchemy"] = "one-trip",
                  ) -> AsyncEngine:
    """An engine for a SQLite URL, opened as batchd opens it (WAL and the pragmas above).
    `driver`: batchd's (sqlite_driver.py, what batchd runs) or SQLAlchemy's own aiosqlite
    adapter (what bench/store_calls.py and the driver's tests compare it with)."""
    # hide_parameters: an error's text never carries the statement's values (a signing
    # secret, a key hash) into a log or traceback.
    module = {"module": _sqlite_driver()} if driver == "one-trip" else {}
    engine = create_async_engine(url, hide_parameters=True, **module)
    event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


class Database:
    """One database, held by every part of the store: its engine, its migrations, and the
    transactions the parts read and write in."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = make_url(url).get_backend_name() == "postgresql"
        # hide_parameters: an error's text never carries the statement's values (a signing
        # secret, a key hash) into a log or traceback.
        if self.postgres:
            self._engine: AsyncEngine = create_async_engine(
                url, pool_pre_ping=True, connect_args=_POSTGRES_CONNECT_ARGS,
                hide_parameters=True)
        else:
            self._engine = sqlite_engine(url)
        # SQLite allows one writer at a time. Writers of this process queue here instead of
        # spinning in SQLite's busy handler (which sleeps in steps of up to 100 ms); other
        # processes are still kept apart by SQLite's own lock.
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None
        self._ping_engine: AsyncEngine | None = None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed at the end of the block, rolled back by an error."""
        if self._write_lock is None:
            async with self._engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._engine.begin() as conn:
            yield conn

    def read(self) -> AsyncConnection:
        """A connection for reads, closed at the end of its `async with` block."""
        return self._engine.connect()

    async def one(self, query: Any, values: dict[str, Any] | None = None) -> RowMapping | None:
        """The first row `query` reads (given its bound `values`), if any."""
        async with self.read() as conn:
            return (await conn.execute(query, values)).mappings().first()

    @shielded
    async def migrate(self) -> None:
        """Bring the schema to the newest migration: idempotent, and safe when several
        processes start at once (they take turns; the later ones find nothing to do).

        On PostgreSQL the turns are a transaction-scoped advisory lock, and DDL is
        transactional; on SQLite, a file lock beside the database file."""

        def upgrade(conn: Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", _MIGRATIONS)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        if self.postgres:
            # Its own engine: a migration of a big table may run for minutes, past the
            # command timeout that everyday statements have.
            engine = create_async_engine(
                self.url, poolclass=NullPool, hide_parameters=True,
                connect_args={**_POSTGRES_CONNECT_ARGS, "command_timeout": None})
            try:
                async with engine.begin() as conn:
                    await conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
                    await conn.run_sync(upgrade)
            finally:
                await engine.dispose()
            return
        async with self._sqlite_migration_lock(), self.write() as conn:
            await conn.run_sync(upgrade)

    @contextlib.asynccontextmanager
    async def _sqlite_migration_lock(self) -> AsyncIterator[None]:
        database = make_url(self.url).database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as lock:
            # Another process may hold it for a whole migration: wait off the event loop.
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            yield

    async def ping(self) -> None:
        """One round trip to the database (the readiness probe's check), on a connection of
        its own: a pool that is busy under load is not an outage, and must not make every
        API process unready at once."""
        if self._ping_engine is None:
            driver: dict[str, Any] = ({"connect_args": _POSTGRES_CONNECT_ARGS} if self.postgres
                                      else {"module": _sqlite_driver()})
            self._ping_engine = create_async_engine(self.url, poolclass=NullPool,
                                                    hide_parameters=True, **driver)
        async with self._ping_engine.connect() as conn:
            await conn.execute(select(1))

    async def database_time(self) -> float:
        """Seconds since the epoch by the database server's clock (the local clock on
        SQLite, whose database is on this machine)."""
        if not self.postgres:
            return time.time()
        async with self._engine.connect() as conn:
            return float((await conn.execute(
                select(func.extract("epoch", func.clock_timestamp())))).scalar_one())

    async def listen_for_work(self, wake: Callable[[], None], stopping: asyncio.Event) -> None:
        """Call `wake` whenever another process announces work (PostgreSQL's LISTEN/NOTIFY),
        until `stopping` is set. A dropped connection is opened again (after a growing
        wait); every (re)connection wakes once, for what was announced meanwhile. Polling
        remains the fallback, so a missed notice only costs a poll interval."""
        import asyncpg

        url = make_url(self.url)
        # Only what libpq understands: SQLAlchemy's own options would be sent as settings.
        query = {k: v for k, v in url.query.items() if k in ("ssl", "sslmode")}
        dsn = url.set(drivername="postgresql", query=query).render_as_string(
            hide_password=False)
        delay, warned = 1.0, False
        while not stopping.is_set():
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
            except Exception as exc:
                if not warned:  # once: polling still finds the work, only later
                    log.warning("cannot listen for new work (polling meanwhile): %s", exc)
                    warned = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
                delay = min(delay * 2, 30.0)
                continue
            delay, warned = 1.0, False
            try:
                await conn.add_listener(WORK_CHANNEL, lambda *_: wake())
                wake()
                while not stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await stopping.wait()
                    # A cut-off network shows only when something is sent.
                    async with asyncio.timeout(10):
                        await conn.execute("SELECT 1")
            except Exception as exc:
                log.debug("stopped listening for work: %s", exc)
            finally:
                conn.terminate()

    async def close(self) -> None:
        if self._ping_engine is not None:
            await self._ping_engine.dispose()
        await self._engine.dispose()


def _postgres(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


async def lock_owner(conn: AsyncConnection, owner: str) -> None:
    """Queue this transaction behind any other that checks the same owner's limits
    (several API processes may race). SQLite needs nothing: a write transaction there
    already excludes every other writer."""
    if _postgres(conn):
        await conn.execute(select(func.pg_advisory_xact_lock(
            OWNER_LOCK_SPACE, func.hashtext(owner))))


async def notify_work(conn: AsyncConnection) -> None:
    """Wake the workers listening on other hosts when this transaction commits (work
    appeared, or came back); their polling is the fallback."""
    if _postgres(conn):
        await conn.execute(select(func.pg_notify(WORK_CHANNEL, "")))


def next_seq(conn: AsyncConnection, table: Any) -> Any:
    """Creation order for paging, from the database, so processes on several hosts agree:
    a sequence on PostgreSQL; on SQLite (one writer at a time) one past the highest. An
    expression for the insert itself, so the insert stays a transaction's first
    statement."""
    if _postgres(conn):
        return func.nextval(_SEQUENCE)
    return select(func.coalesce(func.max(table.c.seq), 0) + 1).scalar_subquery()


def owned(query: Any, column: Any, owner: str | None) -> Any:
    """Restrict a query to one owner's rows; `None` (an admin) sees every owner's."""
    return query if owner is None else query.where(column == owner)


def by_id(table: Any, record_id: str, owner: str | None) -> Any:
    """The row of `table` with this id, if `owner`'s (any owner's for `None`)."""
    return owned(select(table).where(table.c.id == record_id), table.c.owner, owner)


async def page(conn: AsyncConnection, table: Any, query: Any, *, owner: str | None,
               after: str | None, limit: int, ascending: bool) -> tuple[list[RowMapping], bool]:
    """Up to `limit` rows of `query` in creation order (`seq`, then `id`) from just past the
    row `after`, and whether more follow. An `after` that is no row of `owner`'s gives an
    empty page: a cursor cannot reveal another owner's row."""
    c = table.c
    if after is not None:
        cursor = (await conn.execute(
            owned(select(c.seq, c.id).where(c.id == after), c.owner, owner))).first()
        if cursor is None:
            return [], False
        key = tuple_(c.seq, c.id)
        query = query.where(key > tuple(cursor) if ascending else key < tuple(cursor))
    order = (c.seq, c.id) if ascending else (c.seq.desc(), c.id.desc())
    rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).mappings().all()
    return list(rows[:limit]), len(rows) > limit
