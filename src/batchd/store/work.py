"""Store verbs for the worker: leasing, validating, running and finishing batches and chunks.

Claims, heartbeats, checkpoints and commits are all fenced by lease generation (store/sql.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.limits.errors import QuotaExceeded
from batchd.store import tables as t
from batchd.store.records import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    Chunk,
    ChunkPlan,
    ChunkProgress,
    ChunkState,
    FileRecord,
    Lease,
    Part,
)
from batchd.store.sql import Database, lock_owner, next_seq, notify_work, shielded
from batchd.store.usage import record_part_usage
from batchd.store.webhooks import record_event


class SqlWork:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- batch-level work: validation and assembly ----------------------------------------

    @shielded
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
        first = (select(b.id)
                 .where(needs_work, or_(b.lease_expires_at.is_(None), b.lease_expires_at < now))
                 .order_by(b.expires_at, b.seq)
                 .limit(1))
        # Mostly no batch needs a task: a read says so without a write transaction (on
        # SQLite, the one writer's lock that running chunks' checkpoints queue for).
        if await self._db.one(first) is None:
            return None
        # Concurrent claimers skip a batch another is taking instead of queueing on it.
        candidate = first.with_for_update(skip_locked=True, of=t.batches).scalar_subquery()
        async with self._db.write() as conn:
            row = (await conn.execute(
                update(t.batches)
                .where(b.id == candidate)
                .values(lease_owner=worker, lease_generation=b.lease_generation + 1,
                        lease_expires_at=now + lease_seconds)
                .returning(*t.batches.c)
            )).mappings().first()
            if row is not None and (row["status"] == BatchStatus.FINALIZING
                                    or row["stop_reason"] is not None):
                # Assembly is about to read the chunks: fence out any worker whose lease
                # lapsed, so no part is added after they are read (it would be in no file).
                await conn.execute(
                    update(t.chunks)
                    .where(ch.batch_id == row["id"], ch.state == ChunkState.LEASED)
                    .values(generation=ch.generation + 1, owner=None,
                            state=ChunkState.PENDING, lease_expires_at=None))
        if row is None:
            return None
        return BatchRecord.from_row(row), Lease(owner=worker, generation=row["lease_generation"])

    @shielded
    async def renew_batch_lease(
        self, batch_id: str, lease: Lease, *, now: float, lease_seconds: float
    ) -> BatchRecord | None:
        """Extend the lease; None means it was lost. The record shows a pending cancel."""
        async with self._db.write() as conn:
            row = (await conn.execute(
                update(t.batches).where(_batch_fence(batch_id, lease))
                .values(lease_expires_at=now + lease_seconds)
                .returning(*t.batches.c)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @shielded
    async def release_batch_lease(self, batch_id: str, lease: Lease) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(t.batches).where(_batch_fence(batch_id, lease))
                .values(lease_owner=None, lease_expires_at=None)
            )

    @shielded
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
        async with self._db.write() as conn:
            row = (await conn.execute(
                update(t.batches)
                .where(_batch_fence(batch_id, lease), b.status == BatchStatus.VALIDATING)
                .values(status=status, in_progress_at=now, total=total, model=model,
                        finalizing_at=None if plans else now,
                        lease_owner=None, lease_expires_at=None)
                .returning(b.expires_at, b.owner)
            )).first()
            if row is None:
                return False
            deadline, owner = row
            if token_limit is not None:
                await lock_owner(conn, owner)
                enqueued = await _enqueued_tokens(conn, owner, exclude=batch_id)
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
                         state=ChunkState.PENDING, generation=0, attempts=0, deadline=deadline,
                         model=model)
                    for p in batch_of_plans
                ])
            await notify_work(conn)
        return True

    @shielded
    async def fail_batch(
        self, batch_id: str, lease: Lease, *, errors: list[dict[str, Any]], now: int
    ) -> bool:
        async with self._db.write() as conn:
            owner = (await conn.execute(
                update(t.batches)
                .where(_batch_fence(batch_id, lease),
                       t.batches.c.status == BatchStatus.VALIDATING)
                .values(status=BatchStatus.FAILED, failed_at=now, errors=errors,
                        lease_owner=None, lease_expires_at=None)
                .returning(t.batches.c.owner)
            )).scalar_one_or_none()
            if owner is None:
                return False
            await record_event(conn, owner=owner, type_="batch.failed",
                                    data={"id": batch_id}, now=now)
            return True

    @shielded
    async def finish_batch(
        self, batch_id: str, lease: Lease, *, status: BatchStatus,
        output_file: FileRecord | None, error_file: FileRecord | None,
        counts: ChunkProgress, now: int, total: int | None = None,
    ) -> bool:
        """Make the batch terminal and publish its result files in one transaction, so a file
        object appears only when complete and only once. `total` replaces the request count
        when validation never set it (a batch stopped while validating)."""
        b = t.batches.c
        stamp = {
            BatchStatus.COMPLETED: "completed_at", BatchStatus.CANCELLED: "cancelled_at",
            BatchStatus.EXPIRED: "expired_at", BatchStatus.FAILED: "failed_at",
        }[status]
        async with self._db.write() as conn:
            owner = (await conn.execute(
                update(t.batches)
                .where(_batch_fence(batch_id, lease), b.status.in_(ACTIVE_STATUSES))
                .values(
                    status=status, **{stamp: now},
                    output_file_id=output_file.id if output_file else None,
                    error_file_id=error_file.id if error_file else None,
                    completed=counts.n_ok, failed=counts.n_err,
                    **({} if total is None else {"total": total}),
                    input_tokens=counts.input_tokens, output_tokens=counts.output_tokens,
                    cached_tokens=counts.cached_tokens,
                    lease_owner=None, lease_expires_at=None,
                )
                .returning(b.owner)
            )).scalar_one_or_none()
            if owner is None:
                return False
            # The notice commits with the status change (webhooks' outbox).
            await record_event(conn, owner=owner, type_=f"batch.{status.value}",
                                    data={"id": batch_id}, now=now)
            for record in (output_file, error_file):
                if record is not None:
                    await conn.execute(t.files.insert().values(
                        **t.as_row(record) | {"seq": next_seq(conn, t.files)}))
        return True

    # --- periodic housekeeping ---------------------------------------------------------------

    @shielded
    async def take_turn(self, job: str, *, now: float, every: float) -> bool:
        """Whether this process runs the periodic `job` now: of all the workers sharing the
        store, one per period does (the others find the turn taken)."""
        h = t.housekeeping.c
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.housekeeping).where(h.job == job, h.due_at <= now)
                .values(due_at=now + every))
            return result.rowcount == 1

    # --- chunk-level work -------------------------------------------------------------------

    @shielded
    async def claim_chunk(
        self, *, worker: str, now: float, lease_seconds: float,
        models: Sequence[str] | None = None, mixed: bool = True,
        newcomers: Sequence[str] = (), served: Sequence[str] = (),
    ) -> tuple[Chunk, Lease] | None:
        """Lease the next runnable chunk: pending, or leased by a worker that vanished.

        Only chunks whose `model` is in `models` (None: any), or whose batch names several
        models (or one not among `served`) when `mixed`; or, for `newcomers` models, of an
        owner with nothing running (a small batch need not wait for a huge one to end). Fair
        between owners first (the owner with the fewest chunks running goes next), then most
        urgent deadline first.
        Live counts restart from what the chunk has committed. A chunk is never given up
        here: worker deaths count against the requests that were in flight
        (worker/deaths.py), and the batch's deadline bounds the rest."""
        values = {"now": now, "worker": worker, "lease_until": now + lease_seconds}
        ranking = RANK_BATCHES_ANY if models is None else RANK_BATCHES
        if models is not None:
            values.update(models=list(models), mixed=mixed, newcomers=list(newcomers),
                          served=list(served))
        async with self._db.write() as conn:
            for batch_id in (await conn.execute(ranking, values)).scalars().all():
                claimed = await conn.execute(CLAIM_IN_BATCH,
                                             {**values, "claimed_batch": batch_id})
                row = claimed.mappings().first()
                if row is not None:
                    return Chunk.from_row(row), Lease(owner=worker, generation=row["generation"])
        return None

    @shielded
    async def heartbeat_chunk(
        self, chunk: Chunk, lease: Lease, *, progress: ChunkProgress, now: float,
        lease_seconds: float,
    ) -> BatchRecord | None:
        """Extend the lease and publish live counts. None: the chunk is no longer ours.
        The returned batch tells the worker whether to stop (cancel, expiry)."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.chunks).where(_CHUNK_FENCE)
                .values(lease_expires_at=now + lease_seconds, **t.live_values(progress)),
                _fenced(chunk, lease))
            if result.rowcount != 1:
                return None
            row = (await conn.execute(
                select(t.batches).where(t.batches.c.id == chunk.batch_id)
            )).mappings().first()
        return BatchRecord.from_row(row) if row else None

    @shielded
    async def reserve_chunk(self, chunk: Chunk, lease: Lease, *,
                            in_flight: dict[str, Any]) -> bool:
        """Record which requests the run may start next (fenced), before it starts them: if
        the worker dies, the next run knows whom to suspect."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.chunks).where(_CHUNK_FENCE).values(in_flight=in_flight),
                _fenced(chunk, lease))
            return result.rowcount == 1

    @shielded
    async def record_deaths(self, chunk: Chunk, lease: Lease, *,
                            strikes: dict[str, list[int]]) -> bool:
        """Charge the previous run's death to its in-flight requests, once (fenced)."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.chunks).where(_CHUNK_FENCE)
                .values(strikes=strikes or None, in_flight=None),
                _fenced(chunk, lease))
            return result.rowcount == 1

    @shielded
    async def record_crash(self, *, owner: str, life: str, cause: str) -> int:
        """A worker process (`life` of worker `owner`) crashed with a trace (`cause`): mark
        the in-flight records that life left on the chunks it still holds, so the next run
        charges the crash to those requests (worker/crashes.py). Fenced by generation: a
        chunk claimed meanwhile is another run's. Returns how many chunks were marked."""
        c = t.chunks.c
        marked = 0
        async with self._db.write() as conn:
            rows = (await conn.execute(
                select(c.batch_id, c.chunk_no, c.generation, c.in_flight)
                .where(c.owner == owner, c.state == ChunkState.LEASED)
            )).all()
            for batch_id, chunk_no, generation, in_flight in rows:
                # Filtered here, not in SQL: JSON paths differ between SQLite and PostgreSQL.
                if not isinstance(in_flight, dict) or in_flight.get("life") != life:
                    continue
                result = await conn.execute(
                    update(t.chunks)
                    .where(c.batch_id == batch_id, c.chunk_no == chunk_no, c.owner == owner,
                           c.generation == generation, c.state == ChunkState.LEASED)
                    .values(in_flight={**in_flight, "crash": cause}))
                marked += result.rowcount
        return marked

    @shielded
    async def checkpoint_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[Part],
        committed: ChunkProgress, now: float, lease_seconds: float, release: bool = False,
        crashed: dict[str, Any] | None = None, failed: bool = False,
    ) -> bool:
        """Record results so far (fenced); with `release`, hand the rest of the chunk back.

        A clean release (shutdown, an unreachable engine) does not count as an attempt and
        suspects nobody. A release after requests `crashed` the run records them in flight,
        as a death would. A `failed` release (the run failed for no request's doing) counts
        as an attempt and as one of the chunk's `failed_runs`."""
        values: dict[str, Any] = dict(parts=parts, **t.done_values(committed),
                                      **t.live_values(committed))
        if release:
            values.update(state=ChunkState.PENDING, owner=None, lease_expires_at=None,
                          in_flight=crashed)
            if failed:
                values.update(failed_runs=t.chunks.c.failed_runs + 1)
            elif crashed is None:
                values.update(attempts=t.chunks.c.attempts - 1)
        else:
            values.update(lease_expires_at=now + lease_seconds)
        async with self._db.write() as conn:
            before = await _fenced_parts(conn, chunk, lease)
            if before is None:
                return False
            result = await conn.execute(
                update(t.chunks).where(_CHUNK_FENCE).values(**values), _fenced(chunk, lease))
            if result.rowcount != 1:
                return False
            await record_part_usage(conn, chunk.batch_id, before, parts, now,
                                    postgres=self._db.postgres)
            if release:
                await notify_work(conn)
            return True

    @shielded
    async def commit_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[Part],
        committed: ChunkProgress, now: float,
    ) -> bool:
        """Mark the chunk done, fenced; the last chunk moves its batch to `finalizing`.

        On PostgreSQL the batch row is locked first: two last chunks committed at once would
        otherwise each see the other still running (neither commit is visible to the other)
        and leave the batch `in_progress` for good. SQLite's single writer needs no lock."""
        async with self._db.write() as conn:
            if self._db.postgres:
                await conn.execute(select(t.batches.c.id)
                                   .where(t.batches.c.id == chunk.batch_id).with_for_update())
            before = await _fenced_parts(conn, chunk, lease)
            if before is None:
                return False
            result = await conn.execute(
                update(t.chunks).where(_CHUNK_FENCE)
                .values(state=ChunkState.DONE, parts=parts, lease_expires_at=None,
                        in_flight=None, finished_at=now, **t.done_values(committed),
                        **t.live_values(committed)),
                _fenced(chunk, lease))
            if result.rowcount != 1:
                return False
            await record_part_usage(conn, chunk.batch_id, before, parts, now,
                                    postgres=self._db.postgres)
            await _finalize_if_finished(conn, chunk.batch_id, now=int(now))
        return True

    @shielded
    async def release_leases_of(self, owner: str) -> int:
        """Free all work held under `owner` (a restarted worker reclaiming its past life's).
        What that life had in flight stays recorded: the next run charges the death to it."""
        async with self._db.write() as conn:
            chunks = await conn.execute(
                update(t.chunks)
                .where(t.chunks.c.owner == owner, t.chunks.c.state == ChunkState.LEASED)
                .values(state=ChunkState.PENDING, owner=None, lease_expires_at=None)
            )
            batches = await conn.execute(
                update(t.batches).where(t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            if chunks.rowcount + batches.rowcount:
                await notify_work(conn)
            return chunks.rowcount + batches.rowcount

    async def get_chunk(self, batch_id: str, chunk_no: int) -> Chunk | None:
        row = await self._db.one(select(t.chunks).where(t.chunks.c.batch_id == batch_id,
                                                        t.chunks.c.chunk_no == chunk_no))
        return Chunk.from_row(row) if row else None

    async def list_chunks(self, batch_id: str) -> list[Chunk]:
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(t.chunks).where(t.chunks.c.batch_id == batch_id)
                .order_by(t.chunks.c.chunk_no)
            )).mappings()
            return [Chunk.from_row(r) for r in rows]


async def _fenced_parts(conn: AsyncConnection, chunk: Chunk,
                        lease: Lease) -> list[Part] | None:
    """The parts the chunk row names, if this lease still holds it (the row locked until the
    transaction ends, on PostgreSQL); None if it does not."""
    row = (await conn.execute(_FENCED_PARTS, _fenced(chunk, lease))).first()
    return None if row is None else list(row[0] or [])


def _batch_fence(batch_id: str, lease: Lease) -> Any:
    b = t.batches.c
    return and_(b.id == batch_id, b.lease_owner == lease.owner,
                b.lease_generation == lease.generation)


# The chunk held under a lease: built once (five comparisons cost a quarter of a millisecond
# of CPU to build, at each of a run's fenced writes); its values are bound by `_fenced`.
_CHUNK_FENCE = and_(t.chunks.c.batch_id == bindparam("fence_batch_id"),
                    t.chunks.c.chunk_no == bindparam("fence_chunk_no"),
                    t.chunks.c.owner == bindparam("fence_owner"),
                    t.chunks.c.generation == bindparam("fence_generation"),
                    t.chunks.c.state == ChunkState.LEASED)


def _fenced(chunk: Chunk, lease: Lease) -> dict[str, Any]:
    """The values `_CHUNK_FENCE` is executed with."""
    return {"fence_batch_id": chunk.batch_id, "fence_chunk_no": chunk.chunk_no,
            "fence_owner": lease.owner, "fence_generation": lease.generation}


_FENCED_PARTS = select(t.chunks.c.parts).where(_CHUNK_FENCE).with_for_update()


async def _enqueued_tokens(conn: AsyncConnection, owner: str, *,
                           exclude: str | None = None) -> dict[str, int]:
    b, bt = t.batches.c, t.batch_tokens.c
    query = (
        select(bt.model, func.sum(bt.tokens))
        .join(t.batches, b.id == bt.batch_id)
        .where(b.owner == owner, b.status.in_(ACTIVE_STATUSES))
        .group_by(bt.model)
    )
    if exclude is not None:
        query = query.where(bt.batch_id != exclude)
    return {name: int(n) for name, n in (await conn.execute(query)).all()}


async def _finalize_if_finished(conn: AsyncConnection, batch_id: str, *,
                                now: int) -> None:
    finished = await conn.execute(FINALIZE_IF_FINISHED,
                                  {"finished_batch": batch_id, "finalizing_at": now})
    if finished.rowcount:
        await notify_work(conn)  # ready to assemble


# The batch that has no unfinished chunk left goes to assembly; parametrised by
# `finished_batch` and `finalizing_at`.
FINALIZE_IF_FINISHED = (
    update(t.batches)
    .where(t.batches.c.id == bindparam("finished_batch"),
           t.batches.c.status == BatchStatus.IN_PROGRESS, t.batches.c.stop_reason.is_(None))
    .where(~exists().where(t.chunks.c.batch_id == bindparam("finished_batch"),
                           t.CHUNK_UNFINISHED))
    .values(status=BatchStatus.FINALIZING)
)


def _claim_statements(*, any_model: bool) -> tuple[Any, Any]:
    """The chunk claim, built once (its aliases are costly to build on every claim), in two
    statements whose cost does not grow with the chunks waiting: the batches that have a
    claimable chunk, ranked (their owner's running chunks, fewest first, then the deadline),
    and the first claimable chunk of one of them. Parametrised by `now`, `worker`,
    `lease_until`, `claimed_batch` (the second) and (unless `any_model`) `models`, `mixed`,
    `newcomers` and `served`."""
    c, b = t.chunks.c, t.batches.c
    now: Any = bindparam("now")
    running_chunks = t.chunks.alias("running_chunks")
    running_batches = t.batches.alias("running_batches")
    # Leased chunks are few (what the workers hold): counted once per claim, per owner.
    running = (
        select(running_batches.c.owner.label("owner"), func.count().label("chunks"))
        .select_from(running_chunks.join(
            running_batches, running_batches.c.id == running_chunks.c.batch_id))
        .where(running_chunks.c.state == ChunkState.LEASED,
               running_chunks.c.lease_expires_at >= now)
        .group_by(running_batches.c.owner)
        .subquery("running")
    )
    owner_running = func.coalesce(running.c.chunks, 0)
    wanted: Any = true()
    if not any_model:
        wanted = or_(
            c.model.in_(bindparam("models", expanding=True)),
            # Several models, or one no longer served (its lines fail at once, not expire).
            and_(bindparam("mixed", type_=Boolean),
                 or_(c.model.is_(None), c.model.not_in(bindparam("served", expanding=True)))),
            and_(c.model.in_(bindparam("newcomers", expanding=True)), owner_running == 0),
        )
    first_deadline = _first_claimable(c.deadline, batch_id=b.id, now=now,
                                      wanted=wanted).scalar_subquery()
    ranked = (
        select(b.id)
        .select_from(t.batches.outerjoin(running, running.c.owner == b.owner))
        .where(b.status == BatchStatus.IN_PROGRESS, b.stop_reason.is_(None),
               first_deadline.is_not(None))
        .order_by(owner_running, first_deadline, b.id)
        .limit(CLAIM_CANDIDATES)
    )
    first = (
        # Its batch was ranked for a wanted chunk: a batch's chunks all name its model.
        _first_claimable(c.batch_id, c.chunk_no, batch_id=bindparam("claimed_batch"), now=now,
                         wanted=true())
        # Concurrent claimers each take a different chunk instead of queueing on one.
        .with_for_update(skip_locked=True)
    )
    claim = (
        update(t.chunks)
        .where(tuple_(c.batch_id, c.chunk_no).in_(first))
        .values(state=ChunkState.LEASED, owner=bindparam("worker"),
                generation=c.generation + 1, attempts=c.attempts + 1,
                lease_expires_at=bindparam("lease_until"),
                started_at=func.coalesce(c.started_at, bindparam("now")),
                n_ok=c.done_ok, n_err=c.done_err, input_tokens=c.done_input_tokens,
                output_tokens=c.done_output_tokens, cached_tokens=c.done_cached_tokens)
        .returning(*t.chunks.c)
    )
    return ranked, claim


def _first_claimable(*columns: Any, batch_id: Any, now: Any, wanted: Any) -> Any:
    """`columns` of a batch's first claimable chunk (pending, or leased by a worker whose
    lease lapsed) that is `wanted`, reached through the partial index of unfinished chunks
    past however many are done."""
    c = t.chunks.c
    claimable = or_(c.state == ChunkState.PENDING,
                    and_(c.state == ChunkState.LEASED, c.lease_expires_at < now))
    return (select(*columns).where(c.batch_id == batch_id, t.CHUNK_UNFINISHED, claimable, wanted)
            .order_by(c.chunk_no).limit(1))


# How many ranked batches a claim tries: more than one only when concurrent claimers (on
# PostgreSQL) hold every claimable chunk of the first.
CLAIM_CANDIDATES = 8
RANK_BATCHES, CLAIM_IN_BATCH = _claim_statements(any_model=False)
RANK_BATCHES_ANY, _ = _claim_statements(any_model=True)
