"""batchd's SQLite driver (store/sqlite_driver.py): what SQLAlchemy's aiosqlite adapter gives,
in fewer trips to the connection's thread, and never a connection back in the pool with a
transaction open."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from batchd.store import sqlite_driver
from batchd.store.sql import sqlite_engine

pytestmark = pytest.mark.backend_independent


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """batchd's driver and SQLAlchemy's adapter on one database file."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    ours, stock = sqlite_engine(url), sqlite_engine(url, driver="sqlalchemy")
    async with ours.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    yield ours, stock
    await ours.dispose()
    await stock.dispose()


def _trips(conn: object) -> int:
    """Calls this connection has sent to its thread."""
    raw = conn.sync_connection.connection.dbapi_connection  # type: ignore[attr-defined]
    assert isinstance(raw, sqlite_driver.OneTripConnection)
    return raw._sent


async def test_it_answers_as_sqlalchemys_adapter_does(
        engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    said = []
    for made in engines:
        async with made.begin() as conn:
            await conn.execute(text("DELETE FROM t"))
            inserted = await conn.execute(text("INSERT INTO t (id, v) VALUES (7, 'a')"))
            many = await conn.execute(text("INSERT INTO t (v) VALUES (:v)"),
                                      [{"v": "b"}, {"v": "c"}, {"v": "d"}])
            updated = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 7"))
            rows = await conn.execute(text("SELECT id, v FROM t ORDER BY id"))
            said.append((inserted.lastrowid, many.rowcount, updated.rowcount,
                         list(rows.keys()), rows.all(),
                         (await conn.execute(text("SELECT v FROM t WHERE id = 1"))).first()))
        with pytest.raises(exc.IntegrityError):
            async with made.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
    assert said[0] == said[1]
    assert said[0][:4] == (7, 3, 3, ["id", "v"])
    assert said[0][4] == [(7, "a"), (8, "b!"), (9, "c!"), (10, "d!")]


async def test_a_statement_is_one_trip_and_an_empty_commit_or_rollback_none(
        engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    ours, _ = engines
    async with ours.connect() as conn:
        before = _trips(conn)
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert _trips(conn) == before + 1
        await conn.commit()  # a read opened no transaction: nothing to end
        await conn.rollback()
        assert _trips(conn) == before + 1
        await conn.execute(text("INSERT INTO t (v) VALUES ('x')"))
        await conn.commit()  # a write did: its commit is a trip
        assert _trips(conn) == before + 3


async def test_a_cancelled_write_never_leaves_a_transaction_open_in_the_pool(
        engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    """A write cut off before its thread has even started it (the thread was busy): SQLite
    has no transaction open yet when the connection goes back to the pool, but will once the
    write runs, so the rollback must be sent all the same, and run after it."""
    ours, _ = engines
    busy: list[asyncio.Future[None]] = []

    async def write() -> None:
        async with ours.begin() as conn:
            raw = (await conn.get_raw_connection()).dbapi_connection
            assert isinstance(raw, sqlite_driver.OneTripConnection)
            busy.append(asyncio.ensure_future(raw.run(lambda _: time.sleep(0.3))))
            await asyncio.sleep(0.05)  # the thread is asleep in the call above
            # No transaction is open, but a call is under way: not a commit or rollback to skip
            # (SQLAlchemy also discards a connection whose call was cut off; this does not
            # lean on that).
            assert not raw._nothing_to_end()
            await conn.execute(text("INSERT INTO t (v) VALUES ('cut')"))

    task = asyncio.create_task(write())
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.gather(*busy)
    await asyncio.sleep(0.1)  # the insert, then the rollback, have run on the thread
    # No lock is held: another connection (no busy wait) writes at once, and the cut-off
    # insert was rolled back.
    path = ours.url.database
    assert path is not None
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("INSERT INTO t (v) VALUES ('after')")
        other.commit()
        assert other.execute("SELECT v FROM t").fetchall() == [("after",)]
    finally:
        other.close()
