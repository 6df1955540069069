"""Store calls on SQLite: batchd's driver (store/sqlite_driver.py, one trip to the connection's
thread a statement) beside SQLAlchemy's own aiosqlite adapter, in one process, alternated.

Each contender gets the same engine settings (a file database in WAL mode, as batchd's, the
same pool), the same event loop (batchd's choice: uvloop where installed) and a warm-up; each
figure is CPU (user + system of this process) a transaction of one statement, the way the
store's calls run: a read on a connection of its own, a write in a transaction.

    .venv/bin/python bench/store_calls.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from batchd import event_loop
from batchd.settings import Settings
from batchd.store.sql import sqlite_engine

_TEN_ROWS = text("SELECT id, v FROM t WHERE id <= 10")
_UPDATE = text("UPDATE t SET v = 'x' WHERE id = 5")


async def cpu_a_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    """Microseconds of this process's CPU a call, after a warm-up."""
    for _ in range(50):
        await call()
    before = os.times()
    for _ in range(calls):
        await call()
    after = os.times()
    return (after.user - before.user + after.system - before.system) / calls * 1e6


async def measure(root: Path, calls: int, rounds: int) -> None:
    url = f"sqlite+aiosqlite:///{root / 'bench.sqlite3'}"
    engines = {"SQLAlchemy's adapter": sqlite_engine(url, driver="sqlalchemy"),
               "batchd's driver": sqlite_engine(url)}
    async with engines["batchd's driver"].begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        for i in range(100):
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": str(i)})

    def read(made: AsyncEngine, statement: object) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            async with made.connect() as conn:
                return (await conn.execute(statement)).all()  # type: ignore[call-overload]
        return call

    def write(made: AsyncEngine) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            async with made.begin() as conn:
                return (await conn.execute(_UPDATE)).rowcount
        return call

    kinds = {"select 1 (a read)": lambda made: read(made, text("SELECT 1")),
             "ten rows (a read)": lambda made: read(made, _TEN_ROWS),
             "an update (a write)": write}
    seen: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for kind, make in kinds.items():
            for name, made in engines.items():
                seen.setdefault((kind, name), []).append(await cpu_a_call(make(made), calls))
    for made in engines.values():
        await made.dispose()
    for kind in kinds:
        stock, ours = (statistics.median(seen[kind, name]) for name in engines)
        print(f"{kind:20} SQLAlchemy's adapter {stock:5.0f} us of CPU a call, batchd's driver "
              f"{ours:5.0f} us -> {ours / stock:.2f} (medians of {rounds} alternated rounds "
              f"of {calls} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    loop = Settings().event_loop
    print(f"SQLite {sqlite3.sqlite_version}, WAL, one process; event loop "
          f"setting {loop}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        event_loop.run(measure(Path(tmp), args.calls, args.rounds), loop)
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
