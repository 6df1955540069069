"""The metadata store: keys, files and batches as callers see them, plus the worker's verbs
(`WorkStore`). SQLite now, PostgreSQL later, behind the same domain verbs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sqlalchemy import exists, func, select, tuple_, update

from batchd.limits.errors import ActiveBatchLimit
from batchd.store import tables as t
from batchd.store.records import (
    ApiKey,
    BatchRecord,
    BatchStatus,
    ChunkProgress,
    ChunkState,
    FileRecord,
    StopReason,
)
from batchd.store.sql import ACTIVE, as_row, owned, shielded
from batchd.store.uploads import UploadStore
from batchd.store.work import WorkStore


class MetadataStore(WorkStore, UploadStore):
    """Files, batches, chunks and keys, spoken about in domain verbs."""

    # --- keys -------------------------------------------------------------------------------

    @shielded
    async def insert_key(self, key: ApiKey, *, key_hash: str) -> None:
        """Store a key (only its hash; the secret is never stored)."""
        async with self._write() as conn:
            await conn.execute(t.api_keys.insert().values(**as_row(key), key_hash=key_hash))

    async def find_key(self, key_hash: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(t.api_keys).where(t.api_keys.c.key_hash == key_hash)
            )).mappings().first()
        return ApiKey.from_row(row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
            )).mappings()
            return [ApiKey.from_row(r) for r in rows]

    @shielded
    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey | None:
        """Revoke the active key with this id; None if there is none."""
        async with self._write() as conn:
            row = (await conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
                .returning(*t.api_keys.c)
            )).mappings().first()
        return ApiKey.from_row(row) if row else None

    # --- files ------------------------------------------------------------------------------

    @shielded
    async def insert_file(self, record: FileRecord) -> FileRecord:
        async with self._write() as conn:
            seq = (await conn.execute(
                t.files.insert().values(**as_row(record) | {"seq": self._next_seq(t.files)})
                .returning(t.files.c.seq))).scalar_one()
        return dataclasses.replace(record, seq=seq)

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        """A live (not deleted) file; `owner=None` looks across owners (workers)."""
        query = select(t.files).where(t.files.c.id == file_id, t.files.c.deleted_at.is_(None))
        if owner is not None:
            query = query.where(t.files.c.owner == owner)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return FileRecord.from_row(row) if row else None

    async def list_files(
        self, *, owner: str | None, purpose: str | None, limit: int, ascending: bool,
        after: str | None,
    ) -> tuple[list[FileRecord], bool]:
        """`owner=None` lists every owner's files (admins)."""
        c = t.files.c
        query = select(t.files).where(c.deleted_at.is_(None))
        if owner is not None:
            query = query.where(c.owner == owner)
        if purpose is not None:
            query = query.where(c.purpose == purpose)
        async with self._engine.connect() as conn:
            if after is not None:
                cursor = (await conn.execute(
                    owned(select(c.seq, c.id).where(c.id == after), c.owner, owner)
                )).first()
                if cursor is None:
                    return [], False
                key = tuple_(c.seq, c.id)
                query = query.where(key > tuple(cursor) if ascending else key < tuple(cursor))
            order = (c.seq, c.id) if ascending else (c.seq.desc(), c.id.desc())
            rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).mappings().all()
        return [FileRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    @shielded
    async def delete_file(self, file_id: str, *, owner: str | None,
                          now: int) -> FileRecord | None:
        """Hide the file. Its blob stays while an active batch still reads it."""
        async with self._write() as conn:
            row = (await conn.execute(
                owned(update(t.files).where(t.files.c.id == file_id), t.files.c.owner, owner)
                .where(t.files.c.deleted_at.is_(None))
                .values(deleted_at=now)
                .returning(*t.files.c)
            )).mappings().first()
        return FileRecord.from_row(row) if row else None


    async def deleted_files_unused(self) -> list[FileRecord]:
        """Deleted files whose blob no active batch needs any more (ready to purge)."""
        b = t.batches.c
        in_use = exists().where(b.input_file_id == t.files.c.id, b.status.in_(ACTIVE))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.files).where(t.files.c.deleted_at.is_not(None), ~in_use)
            )).mappings()
            return [FileRecord.from_row(r) for r in rows]

    @shielded
    async def expire_files(self, *, now: int) -> int:
        """Files whose `expires_at` passed are deleted, as OpenAI does (their bytes go once no
        running batch reads them)."""
        c = t.files.c
        async with self._write() as conn:
            result = await conn.execute(
                update(t.files)
                .where(c.deleted_at.is_(None), c.expires_at.is_not(None), c.expires_at <= now)
                .values(deleted_at=now)
            )
            return result.rowcount

    @shielded
    async def forget_file(self, file_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(t.files.delete().where(t.files.c.id == file_id))

    # --- batches ----------------------------------------------------------------------------

    @shielded
    async def insert_batch(self, record: BatchRecord, *,
                           max_active: int | None = None) -> BatchRecord:
        """Store a new batch. With `max_active`, only if its owner then has at most that many
        unfinished batches (`ActiveBatchLimit` otherwise): counted and inserted in one
        transaction, so racing creates cannot pass the limit together."""
        c = t.batches.c
        async with self._write() as conn:
            if max_active is not None:
                await self._lock_owner(conn, record.owner)
            # The insert comes first: on SQLite it takes the write lock, so the count below
            # sees every other create of this owner.
            seq = (await conn.execute(
                t.batches.insert().values(**as_row(record) | {"seq": self._next_seq(t.batches)})
                .returning(c.seq))).scalar_one()
            record = dataclasses.replace(record, seq=seq)
            if max_active is not None:
                active = (await conn.execute(
                    select(func.count()).select_from(t.batches)
                    .where(c.owner == record.owner, c.status.in_(ACTIVE))
                )).scalar_one()
                if active > max_active:
                    raise ActiveBatchLimit(active=int(active) - 1, limit=max_active)
            await self._notify_work(conn)  # it needs validating
        return record

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        query = select(t.batches).where(t.batches.c.id == batch_id)
        if owner is not None:
            query = query.where(t.batches.c.owner == owner)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return BatchRecord.from_row(row) if row else None

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """Newest first; `owner=None` lists every owner's batches (admins)."""
        c = t.batches.c
        query = owned(select(t.batches), c.owner, owner)
        async with self._engine.connect() as conn:
            if after is not None:
                cursor = (await conn.execute(
                    owned(select(c.seq, c.id).where(c.id == after), c.owner, owner)
                )).first()
                if cursor is None:
                    return [], False
                query = query.where(tuple_(c.seq, c.id) < tuple(cursor))
            rows = (await conn.execute(
                query.order_by(c.seq.desc(), c.id.desc()).limit(limit + 1)
            )).mappings().all()
        return [BatchRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    async def live_progress(self, batch_ids: Sequence[str]) -> dict[str, ChunkProgress]:
        """Results so far, summed over chunks (committed and in-flight)."""
        if not batch_ids:
            return {}
        c = t.chunks.c
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    c.batch_id,
                    func.sum(c.n_ok), func.sum(c.n_err),
                    func.sum(c.input_tokens), func.sum(c.output_tokens),
                    func.sum(c.cached_tokens),
                ).where(c.batch_id.in_(batch_ids)).group_by(c.batch_id)
            )
            return {  # int(): PostgreSQL sums integers as numeric
                r[0]: ChunkProgress(n_ok=int(r[1] or 0), n_err=int(r[2] or 0),
                                    input_tokens=int(r[3] or 0), output_tokens=int(r[4] or 0),
                                    cached_tokens=int(r[5] or 0))
                for r in rows
            }

    @shielded
    async def request_cancel(self, batch_id: str, *, owner: str | None,
                             now: int) -> BatchRecord | None:
        """Move an active batch to `cancelling`; returns the batch as it now stands."""
        c = t.batches.c
        async with self._write() as conn:
            await conn.execute(
                owned(update(t.batches).where(c.id == batch_id), c.owner, owner)
                .where(c.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                                     BatchStatus.FINALIZING)))
                .where(c.stop_reason.is_(None))
                .values(status=BatchStatus.CANCELLING, cancelling_at=now,
                        stop_reason=StopReason.CANCELLED)
            )
            await self._notify_work(conn)  # someone must assemble what it has
            row = (await conn.execute(
                owned(select(t.batches).where(c.id == batch_id), c.owner, owner)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @shielded
    async def mark_expired(self, *, now: int) -> int:
        """Flag batches whose window passed; the worker then assembles what they have."""
        c = t.batches.c
        async with self._write() as conn:
            result = await conn.execute(
                update(t.batches)
                .where(c.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)))
                .where(c.stop_reason.is_(None), c.expires_at <= now)
                .values(stop_reason=StopReason.EXPIRED)
            )
            if result.rowcount:
                await self._notify_work(conn)
            return result.rowcount

    async def queue_snapshot(self) -> dict[str, dict[str, int]]:
        """Batches by status, and the requests of running batches not finished yet by model
        (for the metrics' store-wide gauges)."""
        b, c = t.batches.c, t.chunks.c
        async with self._engine.connect() as conn:
            statuses = (await conn.execute(
                select(b.status, func.count()).group_by(b.status))).all()
            pending = (await conn.execute(
                select(c.model, func.sum(c.n_lines - c.done_ok - c.done_err))
                .join(t.batches, b.id == c.batch_id)
                .where(b.status == BatchStatus.IN_PROGRESS,
                       c.state.not_in((ChunkState.DONE, ChunkState.FAILED)))
                .group_by(c.model))).all()
        return {"batches": {str(status): int(n) for status, n in statuses},
                "pending": {model or "*": int(n or 0) for model, n in pending}}
