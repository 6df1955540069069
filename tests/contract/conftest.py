"""The `stores` fixture: the store contract runs on SQLite, on a real PostgreSQL, and on the
in-memory fake (which unit tests may then trust to behave as the real stores do)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchd.store.memory import MemoryStore
from batchd.store.memory_tables import MemoryTables
from batchd.store.metadata import MetadataStore
from tests.contract.store_builders import Store, Stores
from tests.support.backends import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    """A factory of stores ("processes") on one fresh, migrated database."""
    if request.param == "memory":
        tables = MemoryTables()

        async def open_memory_store() -> Store:
            return MemoryStore(tables)

        yield open_memory_store
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'batchd.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
    opened: list[MetadataStore] = []

    async def open_store() -> Store:
        store = MetadataStore(url)
        await store.migrate()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()
