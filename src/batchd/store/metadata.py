"""The metadata store: SQL (SQLite now, PostgreSQL later) behind domain verbs.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, event, exists, func, or_, select, tuple_, update
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from batchd.store import tables as t
from batchd.store.records import (
    ApiKey,
    BatchRecord,
    BatchStatus,
    Chunk,
    ChunkPlan,
    ChunkProgress,
    ChunkState,
    FileRecord,
    Lease,
    StopReason,
)

_MIGRATIONS = str(Path(__file__).with_name("migrations"))
_ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING,
           BatchStatus.CANCELLING)


P = ParamSpec("P")
R = TypeVar("R")


def _shielded(verb: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
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


class MetadataStore:
    """Files, batches, chunks and keys, spoken about in domain verbs."""

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

    @_shielded
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

    # --- keys -------------------------------------------------------------------------------

    @_shielded
    async def insert_key(self, key: ApiKey, *, key_hash: str) -> None:
        """Store a key (only its hash; the secret is never stored)."""
        async with self._write() as conn:
            await conn.execute(t.api_keys.insert().values(**_asdict(key), key_hash=key_hash))

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

    @_shielded
    async def revoke_key(self, key_id_or_name: str, *, now: int) -> int:
        async with self._write() as conn:
            result = await conn.execute(
                update(t.api_keys)
                .where(or_(t.api_keys.c.id == key_id_or_name, t.api_keys.c.name == key_id_or_name))
                .where(t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return result.rowcount

    # --- files ------------------------------------------------------------------------------

    @_shielded
    async def insert_file(self, record: FileRecord) -> FileRecord:
        record = dataclasses.replace(record, seq=self._seq.next())
        async with self._write() as conn:
            await conn.execute(t.files.insert().values(**_asdict(record)))
        return record

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
                    _owned(select(c.seq, c.id).where(c.id == after), c.owner, owner)
                )).first()
                if cursor is None:
                    return [], False
                key = tuple_(c.seq, c.id)
                query = query.where(key > tuple(cursor) if ascending else key < tuple(cursor))
            order = (c.seq, c.id) if ascending else (c.seq.desc(), c.id.desc())
            rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).mappings().all()
        return [FileRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    @_shielded
    async def delete_file(self, file_id: str, *, owner: str | None,
                          now: int) -> FileRecord | None:
        """Hide the file. Its blob stays while an active batch still reads it."""
        async with self._write() as conn:
            row = (await conn.execute(
                _owned(update(t.files).where(t.files.c.id == file_id), t.files.c.owner, owner)
                .where(t.files.c.deleted_at.is_(None))
                .values(deleted_at=now)
                .returning(*t.files.c)
            )).mappings().first()
        return FileRecord.from_row(row) if row else None

    async def file_in_use(self, file_id: str) -> bool:
        """Whether an active batch still reads this file as its input."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(t.batches.c.id).where(
                    t.batches.c.input_file_id == file_id, t.batches.c.status.in_(_ACTIVE)
                ).limit(1)
            )).first()
        return row is not None

    async def deleted_files_unused(self) -> list[FileRecord]:
        """Deleted files whose blob no active batch needs any more (ready to purge)."""
        b = t.batches.c
        in_use = exists().where(b.input_file_id == t.files.c.id, b.status.in_(_ACTIVE))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.files).where(t.files.c.deleted_at.is_not(None), ~in_use)
            )).mappings()
            return [FileRecord.from_row(r) for r in rows]

    @_shielded
    async def forget_file(self, file_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(t.files.delete().where(t.files.c.id == file_id))

    # --- batches ----------------------------------------------------------------------------

    @_shielded
    async def insert_batch(self, record: BatchRecord) -> BatchRecord:
        record = dataclasses.replace(record, seq=self._seq.next())
        async with self._write() as conn:
            await conn.execute(t.batches.insert().values(**_asdict(record)))
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
        query = _owned(select(t.batches), c.owner, owner)
        async with self._engine.connect() as conn:
            if after is not None:
                cursor = (await conn.execute(
                    _owned(select(c.seq, c.id).where(c.id == after), c.owner, owner)
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
                ).where(c.batch_id.in_(batch_ids)).group_by(c.batch_id)
            )
            return {
                r[0]: ChunkProgress(n_ok=r[1] or 0, n_err=r[2] or 0,
                                    input_tokens=r[3] or 0, output_tokens=r[4] or 0)
                for r in rows
            }

    @_shielded
    async def request_cancel(self, batch_id: str, *, owner: str | None,
                             now: int) -> BatchRecord | None:
        """Move an active batch to `cancelling`; returns the batch as it now stands."""
        c = t.batches.c
        async with self._write() as conn:
            await conn.execute(
                _owned(update(t.batches).where(c.id == batch_id), c.owner, owner)
                .where(c.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                                     BatchStatus.FINALIZING)))
                .where(c.stop_reason.is_(None))
                .values(status=BatchStatus.CANCELLING, cancelling_at=now,
                        stop_reason=StopReason.CANCELLED)
            )
            row = (await conn.execute(
                _owned(select(t.batches).where(c.id == batch_id), c.owner, owner)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @_shielded
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
            return result.rowcount

    # --- batch-level work: validation and assembly ----------------------------------------

    @_shielded
    async def claim_batch_task(
        self, *, worker: str, now: float, lease_seconds: float
    ) -> tuple[BatchRecord, Lease] | None:
        """Lease one batch that needs validating or assembling, most urgent first."""
        b, ch = t.batches.c, t.chunks.c
        live_chunk = exists().where(
            ch.batch_id == b.id, ch.state == ChunkState.LEASED, ch.lease_expires_at > now
        )
        needs_work = or_(
            and_(b.status == BatchStatus.VALIDATING, b.stop_reason.is_(None)),
            b.status == BatchStatus.FINALIZING,
            and_(b.stop_reason.is_not(None), ~live_chunk,
                 b.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                               BatchStatus.CANCELLING))),
        )
        candidate = (
            select(b.id)
            .where(needs_work, or_(b.lease_expires_at.is_(None), b.lease_expires_at < now))
            .order_by(b.expires_at, b.seq)
            .limit(1)
            .scalar_subquery()
        )
        async with self._write() as conn:
            row = (await conn.execute(
                update(t.batches)
                .where(b.id == candidate)
                .values(lease_owner=worker, lease_generation=b.lease_generation + 1,
                        lease_expires_at=now + lease_seconds)
                .returning(*t.batches.c)
            )).mappings().first()
        if row is None:
            return None
        return BatchRecord.from_row(row), Lease(owner=worker, generation=row["lease_generation"])

    def _batch_fence(self, batch_id: str, lease: Lease) -> Any:
        b = t.batches.c
        return and_(b.id == batch_id, b.lease_owner == lease.owner,
                    b.lease_generation == lease.generation)

    @_shielded
    async def renew_batch_lease(
        self, batch_id: str, lease: Lease, *, now: float, lease_seconds: float
    ) -> BatchRecord | None:
        """Extend the lease; None means it was lost. The record shows a pending cancel."""
        async with self._write() as conn:
            row = (await conn.execute(
                update(t.batches).where(self._batch_fence(batch_id, lease))
                .values(lease_expires_at=now + lease_seconds)
                .returning(*t.batches.c)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @_shielded
    async def release_batch_lease(self, batch_id: str, lease: Lease) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(t.batches).where(self._batch_fence(batch_id, lease))
                .values(lease_owner=None, lease_expires_at=None)
            )

    @_shielded
    async def start_batch(
        self, batch_id: str, lease: Lease, *, plans: Sequence[ChunkPlan], total: int,
        model: str | None, tokens: dict[str, int], token_limit: int | None, now: int,
    ) -> bool:
        """Validation passed: record the chunks and move to `in_progress` (or straight to
        `finalizing` when the file held no requests to run).

        With a `token_limit`, the batch's tokens are enqueued only if the owner's unfinished
        batches plus this one stay within it, per model; otherwise nothing changes and
        `QuotaExceeded` says by how much. Checked and recorded in one write transaction, so
        two batches validated at once cannot both slip under the limit."""
        b = t.batches.c
        status = BatchStatus.IN_PROGRESS if plans else BatchStatus.FINALIZING
        async with self._write() as conn:
            row = (await conn.execute(
                update(t.batches)
                .where(self._batch_fence(batch_id, lease), b.status == BatchStatus.VALIDATING)
                .values(status=status, in_progress_at=now, total=total, model=model,
                        finalizing_at=None if plans else now,
                        lease_owner=None, lease_expires_at=None)
                .returning(b.expires_at, b.owner)
            )).first()
            if row is None:
                return False
            deadline, owner = row
            if token_limit is not None:
                enqueued = await self._enqueued_tokens(conn, owner, exclude=batch_id)
                for name, wanted in sorted(tokens.items()):
                    if enqueued.get(name, 0) + wanted > token_limit:
                        raise QuotaExceeded(model=name, enqueued=enqueued.get(name, 0),
                                            requested=wanted, limit=token_limit)
            if tokens:
                await conn.execute(t.batch_tokens.insert(), [
                    {"batch_id": batch_id, "model": name, "tokens": n}
                    for name, n in tokens.items()])
            for first in range(0, len(plans), 500):
                batch_of_plans = plans[first:first + 500]
                await conn.execute(t.chunks.insert(), [
                    dict(batch_id=batch_id, chunk_no=p.chunk_no, byte_start=p.byte_start,
                         byte_end=p.byte_end, line_start=p.line_start, n_lines=p.n_lines,
                         state=ChunkState.PENDING, generation=0, attempts=0, deadline=deadline)
                    for p in batch_of_plans
                ])
        return True

    async def _enqueued_tokens(self, conn: AsyncConnection, owner: str, *,
                               exclude: str | None = None) -> dict[str, int]:
        b, bt = t.batches.c, t.batch_tokens.c
        query = (
            select(bt.model, func.sum(bt.tokens))
            .join(t.batches, b.id == bt.batch_id)
            .where(b.owner == owner, b.status.in_(_ACTIVE))
            .group_by(bt.model)
        )
        if exclude is not None:
            query = query.where(bt.batch_id != exclude)
        return {name: int(n) for name, n in (await conn.execute(query)).all()}

    async def enqueued_tokens(self, owner: str) -> dict[str, int]:
        """Tokens of the owner's unfinished batches, per model."""
        async with self._engine.connect() as conn:
            return await self._enqueued_tokens(conn, owner)

    async def count_active_batches(self, owner: str) -> int:
        async with self._engine.connect() as conn:
            n = (await conn.execute(
                select(func.count()).select_from(t.batches)
                .where(t.batches.c.owner == owner, t.batches.c.status.in_(_ACTIVE))
            )).scalar_one()
        return int(n)

    @_shielded
    async def fail_batch(
        self, batch_id: str, lease: Lease, *, errors: list[dict[str, Any]], now: int
    ) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                update(t.batches)
                .where(self._batch_fence(batch_id, lease),
                       t.batches.c.status == BatchStatus.VALIDATING)
                .values(status=BatchStatus.FAILED, failed_at=now, errors=errors,
                        lease_owner=None, lease_expires_at=None)
            )
            return result.rowcount == 1

    @_shielded
    async def finish_batch(
        self, batch_id: str, lease: Lease, *, status: BatchStatus,
        output_file: FileRecord | None, error_file: FileRecord | None,
        counts: ChunkProgress, now: int,
    ) -> bool:
        """Make the batch terminal and publish its result files in one transaction, so a file
        object appears only when complete and only once."""
        b = t.batches.c
        stamp = {
            BatchStatus.COMPLETED: "completed_at", BatchStatus.CANCELLED: "cancelled_at",
            BatchStatus.EXPIRED: "expired_at", BatchStatus.FAILED: "failed_at",
        }[status]
        async with self._write() as conn:
            result = await conn.execute(
                update(t.batches)
                .where(self._batch_fence(batch_id, lease), b.status.in_(_ACTIVE))
                .values(
                    status=status, **{stamp: now},
                    output_file_id=output_file.id if output_file else None,
                    error_file_id=error_file.id if error_file else None,
                    completed=counts.n_ok, failed=counts.n_err,
                    input_tokens=counts.input_tokens, output_tokens=counts.output_tokens,
                    lease_owner=None, lease_expires_at=None,
                )
            )
            if result.rowcount != 1:
                return False
            for record in (output_file, error_file):
                if record is not None:
                    record = dataclasses.replace(record, seq=self._seq.next())
                    await conn.execute(t.files.insert().values(**_asdict(record)))
        return True

    # --- chunk-level work -------------------------------------------------------------------

    @_shielded
    async def claim_chunk(
        self, *, worker: str, now: float, lease_seconds: float, max_attempts: int
    ) -> tuple[Chunk, Lease] | None:
        """Lease the next runnable chunk: pending, or leased by a worker that vanished.

        Fair between owners first (the owner with the fewest chunks running goes next, so one
        huge batch cannot starve everyone else's), then most urgent deadline first. Live
        counts restart from what the chunk has committed."""
        c, b = t.chunks.c, t.batches.c
        running_chunks = t.chunks.alias("running_chunks")
        running_batches = t.batches.alias("running_batches")
        owner_running = (
            select(func.count())
            .select_from(running_chunks.join(
                running_batches, running_batches.c.id == running_chunks.c.batch_id))
            .where(running_batches.c.owner == b.owner,
                   running_chunks.c.state == ChunkState.LEASED,
                   running_chunks.c.lease_expires_at >= now)
            .scalar_subquery()
        )
        claimable = or_(
            c.state == ChunkState.PENDING,
            and_(c.state == ChunkState.LEASED, c.lease_expires_at < now),
        )
        candidate = (
            select(c.batch_id, c.chunk_no)
            .join(t.batches, b.id == c.batch_id)
            .where(claimable, c.attempts < max_attempts,
                   b.status == BatchStatus.IN_PROGRESS, b.stop_reason.is_(None))
            .order_by(owner_running, c.deadline, c.batch_id, c.chunk_no)
            .limit(1)
        )
        async with self._write() as conn:
            row = (await conn.execute(
                update(t.chunks)
                .where(tuple_(c.batch_id, c.chunk_no).in_(candidate))
                .values(state=ChunkState.LEASED, owner=worker, generation=c.generation + 1,
                        attempts=c.attempts + 1, lease_expires_at=now + lease_seconds,
                        n_ok=c.done_ok, n_err=c.done_err, input_tokens=c.done_input_tokens,
                        output_tokens=c.done_output_tokens)
                .returning(*t.chunks.c)
            )).mappings().first()
        if row is None:
            return None
        return Chunk.from_row(row), Lease(owner=worker, generation=row["generation"])

    @_shielded
    async def fail_exhausted_chunks(self, *, now: float, max_attempts: int) -> int:
        """Give up on chunks whose workers died `max_attempts` times (a request that crashes
        or hangs every worker must not keep a batch in progress forever)."""
        c = t.chunks.c
        exhausted = and_(
            c.attempts >= max_attempts,
            or_(c.state == ChunkState.PENDING,
                and_(c.state == ChunkState.LEASED, c.lease_expires_at < now)),
        )
        async with self._write() as conn:
            rows = (await conn.execute(
                update(t.chunks).where(exhausted)
                .values(state=ChunkState.FAILED, owner=None, lease_expires_at=None)
                .returning(c.batch_id)
            )).all()
            for batch_id in {r[0] for r in rows}:
                await self._finalize_if_finished(conn, batch_id, now=int(now))
        return len(rows)

    def _chunk_fence(self, chunk: Chunk, lease: Lease) -> Any:
        c = t.chunks.c
        return and_(c.batch_id == chunk.batch_id, c.chunk_no == chunk.chunk_no,
                    c.owner == lease.owner, c.generation == lease.generation,
                    c.state == ChunkState.LEASED)

    @_shielded
    async def heartbeat_chunk(
        self, chunk: Chunk, lease: Lease, *, progress: ChunkProgress, now: float,
        lease_seconds: float,
    ) -> BatchRecord | None:
        """Extend the lease and publish live counts. None: the chunk is no longer ours.
        The returned batch tells the worker whether to stop (cancel, expiry)."""
        async with self._write() as conn:
            result = await conn.execute(
                update(t.chunks).where(self._chunk_fence(chunk, lease))
                .values(lease_expires_at=now + lease_seconds, **_live(progress))
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(
                select(t.batches).where(t.batches.c.id == chunk.batch_id)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @_shielded
    async def checkpoint_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[dict[str, str | None]],
        committed: ChunkProgress, now: float, lease_seconds: float, release: bool = False,
    ) -> bool:
        """Record results so far (fenced); with `release`, hand the rest of the chunk back."""
        values: dict[str, Any] = dict(parts=parts, **_done(committed), **_live(committed))
        if release:
            values.update(state=ChunkState.PENDING, owner=None, lease_expires_at=None,
                          attempts=t.chunks.c.attempts - 1)
        else:
            values.update(lease_expires_at=now + lease_seconds)
        async with self._write() as conn:
            result = await conn.execute(
                update(t.chunks).where(self._chunk_fence(chunk, lease)).values(**values)
            )
            return result.rowcount == 1

    @_shielded
    async def commit_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[dict[str, str | None]],
        committed: ChunkProgress, now: int,
    ) -> bool:
        """Mark the chunk done, fenced; the last chunk moves its batch to `finalizing`."""
        async with self._write() as conn:
            result = await conn.execute(
                update(t.chunks).where(self._chunk_fence(chunk, lease))
                .values(state=ChunkState.DONE, parts=parts, lease_expires_at=None,
                        **_done(committed), **_live(committed))
            )
            if result.rowcount != 1:
                return False
            await self._finalize_if_finished(conn, chunk.batch_id, now=now)
        return True

    async def _finalize_if_finished(self, conn: AsyncConnection, batch_id: str, *,
                                    now: int) -> None:
        c, b = t.chunks.c, t.batches.c
        await conn.execute(
            update(t.batches)
            .where(b.id == batch_id, b.status == BatchStatus.IN_PROGRESS,
                   b.stop_reason.is_(None))
            .where(~exists().where(c.batch_id == batch_id,
                                   c.state.not_in((ChunkState.DONE, ChunkState.FAILED))))
            .values(status=BatchStatus.FINALIZING, finalizing_at=now)
        )

    @_shielded
    async def stop_batch(self, batch_id: str, *, reason: StopReason,
                         errors: list[dict[str, Any]] | None = None) -> None:
        """Stop a running batch (e.g. its input vanished); assembly then reports the rest."""
        b = t.batches.c
        async with self._write() as conn:
            await conn.execute(
                update(t.batches)
                .where(b.id == batch_id, b.status == BatchStatus.IN_PROGRESS,
                       b.stop_reason.is_(None))
                .values(stop_reason=reason, errors=errors)
            )

    @_shielded
    async def release_leases_of(self, owner: str) -> int:
        """Free all work held under `owner` (a restarted worker reclaiming its past life's).
        The lost attempt still counts towards the chunk's limit."""
        async with self._write() as conn:
            chunks = await conn.execute(
                update(t.chunks)
                .where(t.chunks.c.owner == owner, t.chunks.c.state == ChunkState.LEASED)
                .values(state=ChunkState.PENDING, owner=None, lease_expires_at=None)
            )
            batches = await conn.execute(
                update(t.batches).where(t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            return chunks.rowcount + batches.rowcount

    async def list_chunks(self, batch_id: str) -> list[Chunk]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.chunks).where(t.chunks.c.batch_id == batch_id)
                .order_by(t.chunks.c.chunk_no)
            )).mappings()
            return [Chunk.from_row(r) for r in rows]


def _owned(query: Any, column: Any, owner: str | None) -> Any:
    """Restrict a query to one owner's rows; `None` (an admin) sees every owner's."""
    return query if owner is None else query.where(column == owner)


def _asdict(record: object) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}  # type: ignore[arg-type]


def _live(progress: ChunkProgress) -> dict[str, int]:
    return dataclasses.asdict(progress)


def _done(progress: ChunkProgress) -> dict[str, int]:
    return {"done_ok": progress.n_ok, "done_err": progress.n_err,
            "done_input_tokens": progress.input_tokens,
            "done_output_tokens": progress.output_tokens}

