"""SQLite's driver: aiosqlite under SQLAlchemy, one trip to the connection's thread a statement.

aiosqlite runs each SQLite connection on a thread of its own, and every call is a trip there
and back (a future, a queue, a wake-up of the event loop). SQLAlchemy's adapter makes four
trips a statement (open a cursor, execute, fetch, close it), one a commit, and one more for
the rollback that resets a connection given back to its pool, even when nothing is open to
roll back (a read: Python's sqlite3 begins a transaction only before a write). Every store
call pays them: the worker's polls, heartbeats and checkpoints, and each API request's reads.

Here a statement is one trip (executed, its rows fetched, its description, row count and last
row id read, its cursor closed, all on the thread), and a commit or rollback with nothing to
end is no trip at all: when every call sent to the connection has run and SQLite says no
transaction is open (`sqlite3.Connection.in_transaction`). A statement whose caller was
cancelled still runs on the thread afterwards; until it has, a rollback is sent as before and
runs behind it (the thread takes its calls in order), so a connection never goes back to the
pool holding a write transaction.

Measured side by side (bench/store_calls.py: one process, uvloop, the same engine settings,
alternated; 2 cores): a read of one row took 0.46 ms of CPU through SQLAlchemy's adapter and
0.18 ms here, an update in a transaction 0.50 ms and 0.29 ms.

It uses aiosqlite's `Connection._execute` and `_connection`, as SQLAlchemy's own adapter uses
its `_tx` and `_conn`; pyproject.toml bounds both libraries to the versions tested.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

T = TypeVar("T")

# What a statement leaves behind: description, rows, row count, last row id.
_Outcome = tuple[Any, list[Any], int, int | None]


def _statement(conn: sqlite3.Connection, operation: str, parameters: Any,
               many: bool) -> _Outcome:
    """One statement, whole, on the connection's thread (`many`: `executemany`, whose rows
    sqlite3 never returns)."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description and not many else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor that holds a statement's outcome, fetched whole in the statement's trip (as
    SQLAlchemy's adapter fetches every row of a statement at once too)."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    _adapt_connection: OneTripConnection

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # Not the parent's: it opens an aiosqlite cursor, a trip of its own.
        self._adapt_connection = cast(OneTripConnection, adapt_connection)
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # None before an insert, as sqlite3's

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return  # nothing open on the thread

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise self._adapt_connection.dbapi.NotSupportedError("SQLite has one result set")

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._run(operation, seq_of_parameters, many=True)

    async def _run(self, operation: Any, parameters: Any, *, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            outcome = await self._adapt_connection.run(_statement, operation, parameters, many)
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection, its statements one trip each, its empty commits
    and rollbacks none."""

    __slots__ = ("_ran", "_sent")

    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:  # an aiosqlite.Connection
        super().__init__(dbapi, connection)
        self._sent = 0  # calls sent to the thread (counted on the event loop)
        self._ran = 0  # calls the thread has finished (counted on the thread)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(sqlite3 connection, *args)` on the connection's thread."""
        self._sent += 1
        return await self._connection._execute(self._counted, function, *args)  # type: ignore[no-any-return]

    def _counted(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return function(self._connection._conn, *args)
        finally:
            self._ran += 1

    def _nothing_to_end(self) -> bool:
        """Every call sent has run, and SQLite has no transaction open. (A closed connection
        has nothing to end either; the parent's commit and rollback skip it too.)"""
        sqlite = self._connection._connection
        return sqlite is None or (self._ran == self._sent and not sqlite.in_transaction)

    def commit(self) -> None:
        self._end(sqlite3.Connection.commit)

    def rollback(self) -> None:
        self._end(sqlite3.Connection.rollback)

    def _end(self, how: Callable[[sqlite3.Connection], None]) -> None:
        if self._nothing_to_end():
            return
        try:
            await_(self.run(how))
        except Exception as error:
            self._handle_exception(error)


class OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's: exiting never waits on it
        return OneTripConnection(self, await_(connection))


def dbapi() -> OneTripDbapi:
    """The module to give `create_async_engine(..., module=)` for a `sqlite+aiosqlite` URL."""
    return OneTripDbapi(aiosqlite, sqlite3)

