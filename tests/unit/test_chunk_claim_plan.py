"""The statements that claim chunks and finish batches reach a batch's unfinished chunks
through the partial index of them (migration 0011), so their cost does not grow with the
chunks already done or waiting: a batch of a million requests has thousands of chunks, and a
full read of them at every claim once cost minutes of CPU (bench/chunk_claims.py measures
it). Read from SQLite's own query plans, on a migrated database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite

from batchd.store import work
from batchd.store.metadata import MetadataStore

VALUES = {"now": 1.0, "worker": "w", "lease_until": 2.0, "models": ["m"], "mixed": True,
          "newcomers": ["n"], "served": ["m"], "claimed_batch": "b", "finished_batch": "b",
          "finalizing_at": 1}


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    path = tmp_path / "batchd.sqlite3"
    store = MetadataStore(f"sqlite+aiosqlite:///{path}")
    await store.migrate()
    await store.close()
    return path


def plan(path: Path, statement: Any) -> list[str]:
    # As executed: lists of models spelled out, parameters in SQLite's order.
    expanded = statement.compile(dialect=sqlite.dialect()).construct_expanded_state(VALUES)
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {expanded.statement}",
                            expanded.positional_parameters).fetchall()
    return [row[3] for row in rows]


@pytest.mark.parametrize("name", ["RANK_BATCHES", "RANK_BATCHES_ANY", "CLAIM_IN_BATCH",
                                  "FINALIZE_IF_FINISHED"])
def test_chunks_are_reached_through_the_index_of_unfinished_ones(database: Path,
                                                                 name: str) -> None:
    steps = plan(database, getattr(work, name))
    on_chunks = [step for step in steps if " chunks " in f"{step} "]
    assert on_chunks, steps
    # Else only the row a claim updates, by its key.
    assert all("USING INDEX ix_chunks_unfinished (batch_id=?)" in step
               or "sqlite_autoindex_chunks_1 (batch_id=? AND chunk_no=?)" in step
               for step in on_chunks), steps
