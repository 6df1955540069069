"""Store verbs for batches as callers see them: create, read, list and count them, and the
three ways one stops before all of its requests ran.

A stop only records its `stop_reason` (and moves a cancelled batch to `cancelling`); the worker
then assembles what the batch has, through its leased verbs (store/work.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, update

from batchd.limits.errors import ActiveBatchLimit
from batchd.store import tables as t
from batchd.store.records import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    ChunkDone,
    ChunkProgress,
    ChunkRun,
    ChunkState,
    StopReason,
)
from batchd.store.sql import (
    Database,
    by_id,
    lock_owner,
    next_seq,
    notify_work,
    owned,
    page,
    shielded,
)

# A chunk's live counts: its columns, and ChunkProgress's fields, by the same names.
_PROGRESS = ("n_ok", "n_err", "input_tokens", "output_tokens", "cached_tokens")


def _batch_progress() -> Any:
    """A batch's row and its chunks' live counts summed (`live_*`; `live_batch_id` is null
    when it has no chunks), for the bound `batch_id`."""
    c, b = t.chunks.c, t.batches.c
    sums = (select(c.batch_id, *(func.sum(c[name]).label(f"live_{name}") for name in _PROGRESS))
            .where(c.batch_id == bindparam("batch_id")).group_by(c.batch_id).subquery())
    return (select(t.batches, sums.c.batch_id.label("live_batch_id"),
                   *(sums.c[f"live_{name}"] for name in _PROGRESS))
            .select_from(t.batches.outerjoin(sums, sums.c.batch_id == b.id))
            .where(b.id == bindparam("batch_id")))


_BATCH_PROGRESS = _batch_progress()
_OWNED_BATCH_PROGRESS = _BATCH_PROGRESS.where(t.batches.c.owner == bindparam("owner"))


class SqlBatches:
    def __init__(self, db: Database) -> None:
        self._db = db

    @shielded
    async def insert_batch(self, record: BatchRecord, *,
                           max_active: int | None = None) -> BatchRecord:
        """Store a new batch. With `max_active`, only if its owner then has at most that many
        unfinished batches (`ActiveBatchLimit` otherwise): counted and inserted in one
        transaction, so racing creates cannot pass the limit together."""
        c = t.batches.c
        async with self._db.write() as conn:
            if max_active is not None:
                await lock_owner(conn, record.owner)
            # The insert comes first: on SQLite it takes the write lock, so the count below
            # sees every other create of this owner.
            seq = (await conn.execute(
                t.batches.insert().values(**t.as_row(record) | {"seq": next_seq(conn, t.batches)})
                .returning(c.seq))).scalar_one()
            record = dataclasses.replace(record, seq=seq)
            if max_active is not None:
                active = (await conn.execute(
                    select(func.count()).select_from(t.batches)
                    .where(c.owner == record.owner, c.status.in_(ACTIVE_STATUSES))
                )).scalar_one()
                if active > max_active:
                    raise ActiveBatchLimit(active=int(active) - 1, limit=max_active)
            await notify_work(conn)  # it needs validating
        return record

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        row = await self._db.one(by_id(t.batches, batch_id, owner))
        return BatchRecord.from_row(row) if row else None

    async def get_batch_progress(
        self, batch_id: str, *, owner: str | None,
    ) -> tuple[BatchRecord, ChunkProgress | None] | None:
        """The batch (if `owner`'s) and its results so far summed over its chunks (None if it
        has none yet), in one statement built once: what a client polling the batch reads.
        (Two reads cost three times one's CPU, and building this statement anew each time
        cost more than running it.)"""
        statement = _BATCH_PROGRESS if owner is None else _OWNED_BATCH_PROGRESS
        row = await self._db.one(statement, {"batch_id": batch_id, "owner": owner})
        if row is None:
            return None
        live = None
        if row["live_batch_id"] is not None:  # int(): PostgreSQL sums integers as numeric
            live = ChunkProgress(**{name: int(row[f"live_{name}"] or 0) for name in _PROGRESS})
        return BatchRecord.from_row(row), live

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """Newest first; `owner=None` lists every owner's batches (admins)."""
        query = owned(select(t.batches), t.batches.c.owner, owner)
        async with self._db.read() as conn:
            rows, more = await page(conn, t.batches, query, owner=owner, after=after,
                                    limit=limit, ascending=False)
        return [BatchRecord.from_row(r) for r in rows], more

    async def live_progress(self, batch_ids: Sequence[str]) -> dict[str, ChunkProgress]:
        """Results so far, summed over chunks (committed and in-flight)."""
        if not batch_ids:
            return {}
        c = t.chunks.c
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(c.batch_id, *(func.sum(c[name]) for name in _PROGRESS))
                .where(c.batch_id.in_(batch_ids)).group_by(c.batch_id))
            return {  # int(): PostgreSQL sums integers as numeric
                r[0]: ChunkProgress(**{name: int(value or 0)
                                       for name, value in zip(_PROGRESS, r[1:], strict=True)})
                for r in rows
            }

    async def queue_snapshot(self) -> dict[str, dict[str, int]]:
        """Batches by status, and the requests of running batches not finished yet by model:
        all of them (`pending`, queued or running) and those not taken by a worker yet
        (`queued`), for the metrics' store-wide gauges."""
        b, c = t.batches.c, t.chunks.c
        async with self._db.read() as conn:
            statuses = (await conn.execute(
                select(b.status, func.count()).group_by(b.status))).all()
            unfinished = (await conn.execute(
                select(c.model, c.state, func.sum(c.n_lines - c.done_ok - c.done_err))
                .join(t.batches, b.id == c.batch_id)
                .where(b.status == BatchStatus.IN_PROGRESS,
                       c.state.not_in((ChunkState.DONE, ChunkState.FAILED)))
                .group_by(c.model, c.state))).all()
        pending: dict[str, int] = {}
        queued: dict[str, int] = {}
        for model, state, n in unfinished:
            pending[model or "*"] = pending.get(model or "*", 0) + int(n or 0)
            if state == ChunkState.PENDING:
                queued[model or "*"] = queued.get(model or "*", 0) + int(n or 0)
        return {"batches": {str(status): int(n) for status, n in statuses},
                "pending": pending, "queued": queued}

    async def chunks_done(self, batch_id: str) -> list[ChunkDone]:
        """The batch's chunks done so far, in the order they were done (only the columns
        its progress chart needs: not the parts)."""
        c = t.chunks.c
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(c.finished_at, c.done_ok, c.done_err, c.done_output_tokens)
                .where(c.batch_id == batch_id, c.finished_at.is_not(None))
                .order_by(c.finished_at, c.chunk_no))).all()
        return [ChunkDone(float(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def recent_chunk_runs(self, *, models: Sequence[str], since: float,
                                limit: int = 5000) -> list[ChunkRun]:
        """The chunks of `models` (a model's id and aliases) done since `since` in one run,
        newest first (for its throughput: a chunk run twice spans the time between)."""
        c = t.chunks.c
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(c.started_at, c.finished_at, c.done_ok + c.done_err, c.done_output_tokens)
                .where(c.model.in_(list(models)), c.finished_at >= since, c.attempts == 1,
                       c.started_at.is_not(None))
                .order_by(c.finished_at.desc()).limit(limit))).all()
        return [ChunkRun(started_at=float(r[0]), finished_at=float(r[1]), lines=int(r[2]),
                         output_tokens=int(r[3])) for r in rows]

    # --- stopping: a cancel, an expiry, or a failure no request caused --------------------

    @shielded
    async def request_cancel(self, batch_id: str, *, owner: str | None,
                             now: int) -> BatchRecord | None:
        """Move an active batch to `cancelling`; returns the batch as it now stands."""
        c = t.batches.c
        async with self._db.write() as conn:
            await conn.execute(
                owned(update(t.batches).where(c.id == batch_id), c.owner, owner)
                .where(c.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                                     BatchStatus.FINALIZING)))
                .where(c.stop_reason.is_(None))
                .values(status=BatchStatus.CANCELLING, cancelling_at=now,
                        stop_reason=StopReason.CANCELLED)
            )
            await notify_work(conn)  # someone must assemble what it has
            row = (await conn.execute(by_id(t.batches, batch_id, owner))).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @shielded
    async def mark_expired(self, *, now: int) -> int:
        """Flag batches whose window passed; the worker then assembles what they have."""
        c = t.batches.c
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.batches)
                .where(c.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)))
                .where(c.stop_reason.is_(None), c.expires_at <= now)
                .values(stop_reason=StopReason.EXPIRED)
            )
            if result.rowcount:
                await notify_work(conn)
            return result.rowcount

    @shielded
    async def stop_batch(self, batch_id: str, *, reason: StopReason,
                         errors: list[dict[str, Any]] | None = None) -> None:
        """Stop a running batch (e.g. its input vanished); assembly then reports the rest."""
        b = t.batches.c
        async with self._db.write() as conn:
            await conn.execute(
                update(t.batches)
                .where(b.id == batch_id, b.status == BatchStatus.IN_PROGRESS,
                       b.stop_reason.is_(None))
                .values(stop_reason=reason, errors=errors)
            )
