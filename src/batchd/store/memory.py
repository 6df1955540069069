"""An in-memory metadata store: a fake for unit tests. It is never the default, and never
stands in for the real store in the integration or end-to-end tests.

It keeps the rows of store/tables.py in dicts and implements every verb of `ApiStore` and
`WorkerStore` (store/roles.py) with the SQL store's promises: leases fenced by generation,
claims in the same order, parts recorded once, limits and quotas counted per owner, every
owner seeing only its own rows, and a webhook event written with the change it announces.
tests/contract/test_store_contract.py holds both stores to the same cases.

A verb never awaits before it returns, so on one event loop each verb is one transaction:
checked and applied with nothing in between. Several `MemoryStore`s on one `MemoryTables`
stand for several processes sharing one database. A row is copied on its way in and out, as
a database would, so a caller cannot change it by changing a record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from batchd import ids
from batchd.limits.errors import (
    ActiveBatchLimit,
    PartLimit,
    PendingUploadLimit,
    QuotaExceeded,
    check_test_event_limits,
)
from batchd.store import tables as t
from batchd.store.memory_tables import (
    MemoryTables,
    Row,
    insert,
    new_row,
    owns,
    page,
    ranks,
    read,
    update,
)
from batchd.store.records import (
    ACTIVE_STATUSES,
    ApiKey,
    BatchRecord,
    BatchStatus,
    Chunk,
    ChunkDone,
    ChunkPlan,
    ChunkProgress,
    ChunkRun,
    ChunkState,
    FileRecord,
    Lease,
    Part,
    StopReason,
    UploadPart,
    UploadRecord,
    UsageAdd,
    UsageQuery,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from batchd.store.usage import COUNTS, batch_usage, new_part_usage

if TYPE_CHECKING:
    from batchd.store.roles import ApiStore, WorkerStore

_FINISHED = (ChunkState.DONE, ChunkState.FAILED)
_STAMPS = {BatchStatus.COMPLETED: "completed_at", BatchStatus.CANCELLED: "cancelled_at",
           BatchStatus.EXPIRED: "expired_at", BatchStatus.FAILED: "failed_at"}


class MemoryStore:
    """Every verb of `ApiStore` and `WorkerStore`, on `tables` (a fresh, empty store by
    default; pass another store's `tables` to share them as processes share a database)."""

    postgres = False  # nobody announces work: workers poll, as on SQLite

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()

    # --- the database ------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Nothing to do: the tables exist from the start."""

    async def ping(self) -> None:
        """Always answers: the tables are in this process."""

    async def database_time(self) -> float:
        return time.time()

    async def close(self) -> None:
        """Nothing to release; the rows stay for the other stores on the same tables."""

    async def listen_for_work(self, wake: Callable[[], None], stopping: asyncio.Event) -> None:
        """Call `wake` whenever a store on the same tables announces work, until
        `stopping` is set (and once at the start, as a new connection does)."""
        self.tables.listeners.append(wake)
        try:
            wake()
            await stopping.wait()
        finally:
            self.tables.listeners.remove(wake)

    # --- keys -------------------------------------------------------------------------------

    async def insert_key(self, key: ApiKey, *, key_hash: str) -> None:
        if any(r["key_hash"] == key_hash for r in self.tables.api_keys.values()):
            raise ValueError("a key with this hash exists already")
        insert(self.tables.api_keys, key.id,
                new_row(t.api_keys, t.as_row(key) | {"key_hash": key_hash}))

    async def find_key(self, key_hash: str) -> ApiKey | None:
        return next((read(ApiKey, r) for r in self.tables.api_keys.values()
                     if r["key_hash"] == key_hash), None)

    async def list_keys(self) -> list[ApiKey]:
        rows = sorted(self.tables.api_keys.values(), key=lambda r: (r["created_at"], r["id"]))
        return [read(ApiKey, r) for r in rows]

    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey | None:
        row = self.tables.api_keys.get(key_id)
        if row is None or row["revoked_at"] is not None:
            return None
        update(row, revoked_at=now)
        return read(ApiKey, row)

    # --- files ------------------------------------------------------------------------------

    def _add_file(self, record: FileRecord) -> FileRecord:
        record = dataclasses.replace(record, seq=self.tables.next_seq())
        insert(self.tables.files, record.id, new_row(t.files, t.as_row(record)))
        return record

    def _live_file(self, file_id: str, owner: str | None) -> Row | None:
        row = self.tables.files.get(file_id)
        if row is None or row["deleted_at"] is not None or not owns(owner, row):
            return None
        return row

    async def insert_file(self, record: FileRecord) -> FileRecord:
        return self._add_file(record)

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        row = self._live_file(file_id, owner)
        return read(FileRecord, row) if row else None

    async def list_files(
        self, *, owner: str | None, purpose: str | None, limit: int, ascending: bool,
        after: str | None,
    ) -> tuple[list[FileRecord], bool]:
        rows = [r for r in self.tables.files.values()
                if r["deleted_at"] is None and owns(owner, r)
                and (purpose is None or r["purpose"] == purpose)]
        shown, more = page(self.tables.files, rows, owner=owner, after=after, limit=limit,
                           ascending=ascending)
        return [read(FileRecord, r) for r in shown], more

    async def delete_file(self, file_id: str, *, owner: str | None,
                          now: int) -> FileRecord | None:
        row = self._live_file(file_id, owner)
        if row is None:
            return None
        update(row, deleted_at=now)
        return read(FileRecord, row)

    async def deleted_files_unused(self) -> list[FileRecord]:
        in_use = {b["input_file_id"] for b in self.tables.batches.values()
                  if b["status"] in ACTIVE_STATUSES}
        return [read(FileRecord, r) for r in self.tables.files.values()
                if r["deleted_at"] is not None and r["id"] not in in_use]

    async def expire_files(self, *, now: int) -> int:
        expired = [r for r in self.tables.files.values() if r["deleted_at"] is None
                   and r["expires_at"] is not None and r["expires_at"] <= now]
        for row in expired:
            update(row, deleted_at=now)
        return len(expired)

    async def forget_file(self, file_id: str) -> None:
        self.tables.files.pop(file_id, None)

    # --- batches ----------------------------------------------------------------------------

    async def insert_batch(self, record: BatchRecord, *,
                           max_active: int | None = None) -> BatchRecord:
        if max_active is not None:
            active = 1 + sum(1 for b in self.tables.batches.values()
                             if b["owner"] == record.owner and b["status"] in ACTIVE_STATUSES)
            if active > max_active:
                raise ActiveBatchLimit(active=active - 1, limit=max_active)
        record = dataclasses.replace(record, seq=self.tables.next_seq())
        insert(self.tables.batches, record.id, new_row(t.batches, t.as_row(record)))
        self.tables.notify_work()
        return record

    async def get_batch(self, batch_id: str, *, owner: str | None) -> BatchRecord | None:
        row = self.tables.batches.get(batch_id)
        return read(BatchRecord, row) if row and owns(owner, row) else None

    async def get_batch_progress(
        self, batch_id: str, *, owner: str | None,
    ) -> tuple[BatchRecord, ChunkProgress | None] | None:
        record = await self.get_batch(batch_id, owner=owner)
        if record is None:
            return None
        return record, (await self.live_progress([batch_id])).get(batch_id)

    async def list_batches(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        rows = [r for r in self.tables.batches.values() if owns(owner, r)]
        shown, more = page(self.tables.batches, rows, owner=owner, after=after, limit=limit,
                           ascending=False)
        return [read(BatchRecord, r) for r in shown], more

    async def live_progress(self, batch_ids: Sequence[str]) -> dict[str, ChunkProgress]:
        progress: dict[str, ChunkProgress] = {}
        for c in self.tables.chunks.values():
            if c["batch_id"] in batch_ids:
                live = ChunkProgress(n_ok=c["n_ok"], n_err=c["n_err"],
                                     input_tokens=c["input_tokens"],
                                     output_tokens=c["output_tokens"],
                                     cached_tokens=c["cached_tokens"])
                progress[c["batch_id"]] = progress.get(c["batch_id"], ChunkProgress()) + live
        return progress

    async def queue_snapshot(self) -> dict[str, dict[str, int]]:
        statuses = Counter(str(b["status"]) for b in self.tables.batches.values())
        pending: dict[str | None, int] = defaultdict(int)
        queued: dict[str | None, int] = defaultdict(int)
        for c in self.tables.chunks.values():
            if (self.tables.batches[c["batch_id"]]["status"] == BatchStatus.IN_PROGRESS
                    and c["state"] not in _FINISHED):
                pending[c["model"]] += c["n_lines"] - c["done_ok"] - c["done_err"]
                if c["state"] == ChunkState.PENDING:
                    queued[c["model"]] += c["n_lines"] - c["done_ok"] - c["done_err"]
        return {"batches": dict(statuses),
                "pending": {model or "*": n for model, n in pending.items()},
                "queued": {model or "*": n for model, n in queued.items()}}

    async def chunks_done(self, batch_id: str) -> list[ChunkDone]:
        done = sorted((c for c in self._chunks_of(batch_id) if c["finished_at"] is not None),
                      key=lambda c: (c["finished_at"], c["chunk_no"]))
        return [ChunkDone(c["finished_at"], c["done_ok"], c["done_err"],
                          c["done_output_tokens"]) for c in done]

    async def recent_chunk_runs(self, *, models: Sequence[str], since: float,
                                limit: int = 5000) -> list[ChunkRun]:
        done = [c for c in self.tables.chunks.values()
                if c["model"] in models and c["attempts"] == 1 and c["started_at"] is not None
                and c["finished_at"] is not None and c["finished_at"] >= since]
        done.sort(key=lambda c: c["finished_at"], reverse=True)
        return [ChunkRun(started_at=c["started_at"], finished_at=c["finished_at"],
                         lines=c["done_ok"] + c["done_err"],
                         output_tokens=c["done_output_tokens"]) for c in done[:limit]]

    async def request_cancel(self, batch_id: str, *, owner: str | None,
                             now: int) -> BatchRecord | None:
        row = self.tables.batches.get(batch_id)
        if row is None or not owns(owner, row):
            return None
        if row["status"] in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                             BatchStatus.FINALIZING) and row["stop_reason"] is None:
            update(row, status=BatchStatus.CANCELLING, cancelling_at=now,
                    stop_reason=StopReason.CANCELLED)
        self.tables.notify_work()
        return read(BatchRecord, row)

    async def mark_expired(self, *, now: int) -> int:
        expired = [b for b in self.tables.batches.values()
                   if b["status"] in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
                   and b["stop_reason"] is None and b["expires_at"] <= now]
        for row in expired:
            update(row, stop_reason=StopReason.EXPIRED)
        if expired:
            self.tables.notify_work()
        return len(expired)

    async def stop_batch(self, batch_id: str, *, reason: StopReason,
                         errors: list[dict[str, Any]] | None = None) -> None:
        row = self.tables.batches.get(batch_id)
        if row and row["status"] == BatchStatus.IN_PROGRESS and row["stop_reason"] is None:
            update(row, stop_reason=reason, errors=errors)

    # --- batch-level work: validation and assembly ------------------------------------------

    async def claim_batch_task(
        self, *, worker: str, now: float, lease_seconds: float
    ) -> tuple[BatchRecord, Lease] | None:
        live = {c["batch_id"] for c in self.tables.chunks.values()
                if c["state"] == ChunkState.LEASED and c["lease_expires_at"] > now}

        def needs_work(b: Row) -> bool:
            return ((b["status"] == BatchStatus.VALIDATING and b["stop_reason"] is None)
                    or b["status"] == BatchStatus.FINALIZING
                    or (b["stop_reason"] is not None and b["id"] not in live
                        and b["status"] in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                                            BatchStatus.CANCELLING)))

        candidates = [b for b in self.tables.batches.values() if needs_work(b)
                      and (b["lease_expires_at"] is None or b["lease_expires_at"] < now)]
        if not candidates:
            return None
        row = min(candidates, key=lambda b: (b["expires_at"], b["seq"]))
        update(row, lease_owner=worker, lease_generation=row["lease_generation"] + 1,
                lease_expires_at=now + lease_seconds)
        if row["status"] == BatchStatus.FINALIZING or row["stop_reason"] is not None:
            # Assembly is about to read the chunks: fence out any worker whose lease lapsed.
            for c in self._chunks_of(row["id"]):
                if c["state"] == ChunkState.LEASED:
                    update(c, generation=c["generation"] + 1, owner=None,
                            state=ChunkState.PENDING, lease_expires_at=None)
        return read(BatchRecord, row), Lease(owner=worker, generation=row["lease_generation"])

    def _fenced_batch(self, batch_id: str, lease: Lease) -> Row | None:
        row = self.tables.batches.get(batch_id)
        if (row is None or row["lease_owner"] != lease.owner
                or row["lease_generation"] != lease.generation):
            return None
        return row

    async def renew_batch_lease(
        self, batch_id: str, lease: Lease, *, now: float, lease_seconds: float
    ) -> BatchRecord | None:
        row = self._fenced_batch(batch_id, lease)
        if row is None:
            return None
        update(row, lease_expires_at=now + lease_seconds)
        return read(BatchRecord, row)

    async def release_batch_lease(self, batch_id: str, lease: Lease) -> None:
        row = self._fenced_batch(batch_id, lease)
        if row is not None:
            update(row, lease_owner=None, lease_expires_at=None)

    async def start_batch(
        self, batch_id: str, lease: Lease, *, plans: Sequence[ChunkPlan], total: int,
        model: str | None, tokens: dict[str, int], token_limit: int | None, now: int,
    ) -> bool:
        row = self._fenced_batch(batch_id, lease)
        if row is None or row["status"] != BatchStatus.VALIDATING:
            return False
        if token_limit is not None:
            enqueued: dict[str, int] = defaultdict(int)
            for bt in self.tables.batch_tokens.values():
                other = self.tables.batches[bt["batch_id"]]
                if (bt["batch_id"] != batch_id and other["owner"] == row["owner"]
                        and other["status"] in ACTIVE_STATUSES):
                    enqueued[bt["model"]] += bt["tokens"]
            for name, wanted in sorted(tokens.items()):
                if enqueued[name] + wanted > token_limit:
                    raise QuotaExceeded(model=name, enqueued=enqueued[name],
                                        requested=wanted, limit=token_limit)
        update(row, status=BatchStatus.IN_PROGRESS if plans else BatchStatus.FINALIZING,
                in_progress_at=now, total=total, model=model,
                finalizing_at=None if plans else now, lease_owner=None, lease_expires_at=None)
        for name, n in tokens.items():
            insert(self.tables.batch_tokens, (batch_id, name),
                    new_row(t.batch_tokens, {"batch_id": batch_id, "model": name, "tokens": n}))
        for p in plans:
            insert(self.tables.chunks, (batch_id, p.chunk_no), new_row(t.chunks, dict(
                batch_id=batch_id, chunk_no=p.chunk_no, byte_start=p.byte_start,
                byte_end=p.byte_end, line_start=p.line_start, n_lines=p.n_lines,
                state=ChunkState.PENDING, generation=0, attempts=0,
                deadline=row["expires_at"], model=model)))
        self.tables.notify_work()
        return True

    async def fail_batch(
        self, batch_id: str, lease: Lease, *, errors: list[dict[str, Any]], now: int
    ) -> bool:
        row = self._fenced_batch(batch_id, lease)
        if row is None or row["status"] != BatchStatus.VALIDATING:
            return False
        update(row, status=BatchStatus.FAILED, failed_at=now, errors=errors,
                lease_owner=None, lease_expires_at=None)
        self._record_event(owner=row["owner"], type_="batch.failed", data={"id": batch_id},
                           now=now)
        return True

    async def finish_batch(
        self, batch_id: str, lease: Lease, *, status: BatchStatus,
        output_file: FileRecord | None, error_file: FileRecord | None,
        counts: ChunkProgress, now: int, total: int | None = None,
    ) -> bool:
        stamp = _STAMPS[status]
        row = self._fenced_batch(batch_id, lease)
        if row is None or row["status"] not in ACTIVE_STATUSES:
            return False
        for record in (output_file, error_file):
            if record is not None:
                self._add_file(record)
        update(row, status=status, **{stamp: now},
                output_file_id=output_file.id if output_file else None,
                error_file_id=error_file.id if error_file else None,
                completed=counts.n_ok, failed=counts.n_err,
                **({} if total is None else {"total": total}),
                input_tokens=counts.input_tokens, output_tokens=counts.output_tokens,
                cached_tokens=counts.cached_tokens, lease_owner=None, lease_expires_at=None)
        self._record_event(owner=row["owner"], type_=f"batch.{status.value}",
                           data={"id": batch_id}, now=now)
        return True

    async def take_turn(self, job: str, *, now: float, every: float) -> bool:
        row = self.tables.housekeeping.get(job)
        if row is None or row["due_at"] > now:
            return False
        update(row, due_at=now + every)
        return True

    # --- chunk-level work -------------------------------------------------------------------

    def _chunks_of(self, batch_id: str) -> list[Row]:
        return sorted((c for c in self.tables.chunks.values() if c["batch_id"] == batch_id),
                      key=lambda c: c["chunk_no"])

    async def claim_chunk(
        self, *, worker: str, now: float, lease_seconds: float,
        models: Sequence[str] | None = None, mixed: bool = True,
        newcomers: Sequence[str] = (), served: Sequence[str] = (),
    ) -> tuple[Chunk, Lease] | None:
        batches = self.tables.batches
        running = Counter(batches[c["batch_id"]]["owner"] for c in self.tables.chunks.values()
                          if c["state"] == ChunkState.LEASED and c["lease_expires_at"] >= now)

        def wanted(c: Row) -> bool:
            model = c["model"]
            return (models is None or model in models
                    # Several models, or one no longer served (its lines fail at once).
                    or (mixed and (model is None or model not in served))
                    or (model in newcomers and running[batches[c["batch_id"]]["owner"]] == 0))

        candidates = [
            c for c in self.tables.chunks.values()
            if (c["state"] == ChunkState.PENDING
                or (c["state"] == ChunkState.LEASED and c["lease_expires_at"] < now))
            and batches[c["batch_id"]]["status"] == BatchStatus.IN_PROGRESS
            and batches[c["batch_id"]]["stop_reason"] is None and wanted(c)]
        if not candidates:
            return None
        row = min(candidates, key=lambda c: (running[batches[c["batch_id"]]["owner"]],
                                             c["deadline"], c["batch_id"], c["chunk_no"]))
        # Live counts restart from what the chunk has committed.
        update(row, state=ChunkState.LEASED, owner=worker, generation=row["generation"] + 1,
                attempts=row["attempts"] + 1, lease_expires_at=now + lease_seconds,
                started_at=now if row["started_at"] is None else row["started_at"],
                n_ok=row["done_ok"], n_err=row["done_err"],
                input_tokens=row["done_input_tokens"], output_tokens=row["done_output_tokens"],
                cached_tokens=row["done_cached_tokens"])
        return read(Chunk, row), Lease(owner=worker, generation=row["generation"])

    def _fenced_chunk(self, chunk: Chunk, lease: Lease) -> Row | None:
        row = self.tables.chunks.get((chunk.batch_id, chunk.chunk_no))
        if (row is None or row["owner"] != lease.owner or row["generation"] != lease.generation
                or row["state"] != ChunkState.LEASED):
            return None
        return row

    async def heartbeat_chunk(
        self, chunk: Chunk, lease: Lease, *, progress: ChunkProgress, now: float,
        lease_seconds: float,
    ) -> BatchRecord | None:
        row = self._fenced_chunk(chunk, lease)
        if row is None:
            return None
        update(row, lease_expires_at=now + lease_seconds, **t.live_values(progress))
        batch = self.tables.batches.get(chunk.batch_id)
        return read(BatchRecord, batch) if batch else None

    async def reserve_chunk(self, chunk: Chunk, lease: Lease, *,
                            in_flight: dict[str, Any]) -> bool:
        row = self._fenced_chunk(chunk, lease)
        if row is not None:
            update(row, in_flight=in_flight)
        return row is not None

    async def record_deaths(self, chunk: Chunk, lease: Lease, *,
                            strikes: dict[str, list[int]]) -> bool:
        row = self._fenced_chunk(chunk, lease)
        if row is not None:
            update(row, strikes=strikes or None, in_flight=None)
        return row is not None

    async def record_crash(self, *, owner: str, life: str, cause: str) -> int:
        marked = 0
        for row in self.tables.chunks.values():
            in_flight = row["in_flight"]
            if (row["owner"] == owner and row["state"] == ChunkState.LEASED
                    and isinstance(in_flight, dict) and in_flight.get("life") == life):
                update(row, in_flight={**in_flight, "crash": cause})
                marked += 1
        return marked

    async def checkpoint_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[Part],
        committed: ChunkProgress, now: float, lease_seconds: float, release: bool = False,
        crashed: dict[str, Any] | None = None, failed: bool = False,
    ) -> bool:
        row = self._fenced_chunk(chunk, lease)
        if row is None:
            return False
        self._record_part_usage(chunk.batch_id, row["parts"], parts, now)
        update(row, parts=parts, **t.done_values(committed), **t.live_values(committed))
        if not release:
            update(row, lease_expires_at=now + lease_seconds)
            return True
        update(row, state=ChunkState.PENDING, owner=None, lease_expires_at=None,
               in_flight=crashed)
        if failed:
            update(row, failed_runs=row["failed_runs"] + 1)
        elif crashed is None:  # a clean release (shutdown, no engine) is no attempt
            update(row, attempts=row["attempts"] - 1)
        self.tables.notify_work()
        return True

    async def commit_chunk(
        self, chunk: Chunk, lease: Lease, *, parts: list[Part],
        committed: ChunkProgress, now: float,
    ) -> bool:
        row = self._fenced_chunk(chunk, lease)
        if row is None:
            return False
        self._record_part_usage(chunk.batch_id, row["parts"], parts, now)
        update(row, state=ChunkState.DONE, parts=parts, lease_expires_at=None, in_flight=None,
               finished_at=now, **t.done_values(committed), **t.live_values(committed))
        batch = self.tables.batches[chunk.batch_id]
        if (batch["status"] == BatchStatus.IN_PROGRESS and batch["stop_reason"] is None
                and all(c["state"] in _FINISHED for c in self._chunks_of(chunk.batch_id))):
            update(batch, status=BatchStatus.FINALIZING, finalizing_at=int(now))
            self.tables.notify_work()  # ready to assemble
        return True

    def _record_part_usage(self, batch_id: str, before: list[Part], after: list[Part],
                           now: float) -> None:
        by_model = new_part_usage(before, after)
        if by_model:
            self._add_usage(batch_usage(self.tables.batches[batch_id], by_model, now))

    def _add_usage(self, adds: Sequence[UsageAdd]) -> None:
        for add in adds:
            row = self.tables.usage.setdefault(add.key, {**add.row(), **dict.fromkeys(COUNTS, 0)})
            for name in COUNTS:
                row[name] += getattr(add, name)

    async def record_usage(self, adds: Sequence[UsageAdd]) -> None:
        self._add_usage(adds)

    async def read_usage(self, query: UsageQuery) -> list[dict[str, Any]]:
        sums: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self.tables.usage.values():
            if (row["kind"] != query.kind or not query.start <= row["minute"] < query.end
                    or (query.owner is not None and row["owner"] != query.owner)
                    or (query.owners and row["owner"] not in query.owners)
                    or (query.models and row["model"] not in query.models)
                    or (query.key_ids and row["key_id"] not in query.key_ids)
                    or (query.batch is not None and row["batch"] != int(query.batch))):
                continue
            start = row["minute"] - (row["minute"] - query.start) % query.width
            key = (start, *(row[name] for name in query.group_by))
            total = sums.setdefault(key, {"start": start, **{n: row[n] for n in query.group_by},
                                          **dict.fromkeys(COUNTS, 0)})
            for name in COUNTS:
                total[name] += row[name]
        return [sums[key] for key in sorted(sums)]

    async def release_leases_of(self, owner: str) -> int:
        chunks = [c for c in self.tables.chunks.values()
                  if c["owner"] == owner and c["state"] == ChunkState.LEASED]
        for row in chunks:
            update(row, state=ChunkState.PENDING, owner=None, lease_expires_at=None)
        batches = [b for b in self.tables.batches.values() if b["lease_owner"] == owner]
        for row in batches:
            update(row, lease_owner=None, lease_expires_at=None)
        if chunks or batches:
            self.tables.notify_work()
        return len(chunks) + len(batches)

    async def get_chunk(self, batch_id: str, chunk_no: int) -> Chunk | None:
        row = self.tables.chunks.get((batch_id, chunk_no))
        return read(Chunk, row) if row else None

    async def list_chunks(self, batch_id: str) -> list[Chunk]:
        return [read(Chunk, c) for c in self._chunks_of(batch_id)]

    # --- webhooks: endpoints, the outbox, deliveries ----------------------------------------

    async def insert_endpoint(self, endpoint: WebhookEndpoint, *, max_per_owner: int) -> bool:
        held = sum(1 for e in self.tables.webhook_endpoints.values()
                   if e["owner"] == endpoint.owner and e["deleted_at"] is None)
        if held + 1 > max_per_owner:
            return False
        insert(self.tables.webhook_endpoints, endpoint.id,
                new_row(t.webhook_endpoints, t.as_row(endpoint)))
        return True

    def _live_endpoints(self, owner: str | None) -> list[Row]:
        return [e for e in self.tables.webhook_endpoints.values()
                if e["deleted_at"] is None and owns(owner, e)]

    async def list_endpoints(self, *, owner: str | None) -> list[WebhookEndpoint]:
        rows = sorted(self._live_endpoints(owner), key=lambda e: (e["created_at"], e["id"]))
        return [read(WebhookEndpoint, e) for e in rows]

    async def get_endpoint(self, endpoint_id: str, *, owner: str | None) -> WebhookEndpoint | None:
        return next((read(WebhookEndpoint, e) for e in self._live_endpoints(owner)
                     if e["id"] == endpoint_id), None)

    async def update_endpoint(self, endpoint_id: str, *, owner: str | None,
                              **values: Any) -> WebhookEndpoint | None:
        row = next((e for e in self._live_endpoints(owner) if e["id"] == endpoint_id), None)
        if row is None:
            return None
        update(row, **values)
        return read(WebhookEndpoint, row)

    def _record_event(self, *, owner: str, type_: str, data: dict[str, Any], now: int,
                      only: str | None = None) -> str | None:
        """The event, and a pending delivery to each of the owner's enabled endpoints that
        subscribed to its type (or to `only`), with the change that caused it."""
        targets = [e for e in self._live_endpoints(owner) if e["disabled_at"] is None
                   and (e["id"] == only if only is not None else type_ in e["events"])]
        if not targets:
            return None
        event_id = ids.event_id()
        insert(self.tables.webhook_events, event_id, new_row(t.webhook_events, dict(
            id=event_id, owner=owner, type=type_, created_at=now, data=data)))
        for e in targets:
            delivery_id = ids.delivery_id()
            insert(self.tables.webhook_deliveries, delivery_id, new_row(
                t.webhook_deliveries, dict(
                    id=delivery_id, event_id=event_id, endpoint_id=e["id"], state="pending",
                    attempts=0, next_attempt_at=float(now), created_at=now, history=[])))
        self.tables.notify_work()
        return event_id

    async def record_test_event(self, endpoint: WebhookEndpoint, *, now: int,
                                per_endpoint: int, per_owner: int,
                                window: int = 60) -> str | None:
        owners_endpoints = {e["id"] for e in self.tables.webhook_endpoints.values()
                    if e["owner"] == endpoint.owner}
        times = [(d["endpoint_id"], d["created_at"])
                 for d in self.tables.webhook_deliveries.values()
                 if d["endpoint_id"] in owners_endpoints and d["created_at"] > now - window
                 and self.tables.webhook_events[d["event_id"]]["type"] == "webhook.test"]
        check_test_event_limits(times, endpoint_id=endpoint.id, now=now,
                                per_endpoint=per_endpoint, per_owner=per_owner, window=window)
        return self._record_event(owner=endpoint.owner, type_="webhook.test", now=now,
                                  data={"id": endpoint.id, "object": "webhook_endpoint"},
                                  only=endpoint.id)

    async def claim_deliveries(
        self, *, now: float, lease_seconds: float, limit: int, per_owner: int,
        per_endpoint: int,
    ) -> list[tuple[WebhookDelivery, WebhookEvent, WebhookEndpoint]]:
        endpoints, deliveries = self.tables.webhook_endpoints, self.tables.webhook_deliveries

        def owner(d: Row) -> str:
            return str(endpoints[d["endpoint_id"]]["owner"])

        in_flight = [d for d in deliveries.values()
                     if d["state"] == "pending" and d["lease_until"] is not None
                     and d["lease_until"] >= now]
        busy_endpoints = Counter(d["endpoint_id"] for d in in_flight)
        busy_owners = Counter(owner(d) for d in in_flight)
        # Deliveries to a disabled endpoint wait, pending, until it is enabled again.
        due = [d for d in deliveries.values()
               if d["state"] == "pending" and d["next_attempt_at"] <= now
               and endpoints[d["endpoint_id"]]["disabled_at"] is None
               and (d["lease_until"] is None or d["lease_until"] < now)]
        nth = ranks(due, by=lambda d: d["endpoint_id"])
        room = [d for d in due if nth[d["id"]] + busy_endpoints[d["endpoint_id"]] <= per_endpoint]
        turn = ranks(room, by=owner)
        fair = sorted((d for d in room if turn[d["id"]] + busy_owners[owner(d)] <= per_owner),
                      key=lambda d: (turn[d["id"]], d["next_attempt_at"], d["id"]))[:limit]
        for d in fair:
            update(d, lease_until=now + lease_seconds)
        return [(read(WebhookDelivery, d),
                 read(WebhookEvent, self.tables.webhook_events[d["event_id"]]),
                 read(WebhookEndpoint, endpoints[d["endpoint_id"]])) for d in fair]

    async def finish_attempt(self, delivery: WebhookDelivery, *, attempt: dict[str, Any],
                             next_attempt_at: float | None, delivered: bool,
                             disable_reason: str | None, now: int) -> bool:
        row = self.tables.webhook_deliveries.get(delivery.id)
        if row is None or row["lease_until"] != delivery.lease_until:
            return False  # the lease ran out and another sender holds it
        state = ("delivered" if delivered else "pending" if next_attempt_at is not None
                 else "failed")
        update(row, state=state, attempts=delivery.attempts + 1, lease_until=None,
                next_attempt_at=next_attempt_at or delivery.next_attempt_at,
                history=[*delivery.history, attempt])
        endpoint = self.tables.webhook_endpoints[delivery.endpoint_id]
        if disable_reason is not None and endpoint["disabled_at"] is None:
            update(endpoint, disabled_at=now, disabled_reason=disable_reason)
        return True

    async def list_deliveries(self, endpoint_id: str, *, limit: int
                              ) -> list[tuple[WebhookDelivery, WebhookEvent]]:
        rows = sorted((d for d in self.tables.webhook_deliveries.values()
                       if d["endpoint_id"] == endpoint_id),
                      key=lambda d: (d["created_at"], d["id"]), reverse=True)[:limit]
        return [(read(WebhookDelivery, d),
                 read(WebhookEvent, self.tables.webhook_events[d["event_id"]])) for d in rows]

    # --- uploads ----------------------------------------------------------------------------

    async def insert_upload(self, upload: UploadRecord, *,
                            max_pending: int | None = None) -> None:
        if max_pending is not None:
            pending = 1 + sum(
                1 for u in self.tables.uploads.values() if u["owner"] == upload.owner
                and (u["status"] == "completing"
                     or (u["status"] == "pending" and u["expires_at"] > upload.created_at)))
            if pending > max_pending:
                raise PendingUploadLimit(pending=pending - 1, limit=max_pending)
        insert(self.tables.uploads, upload.id, new_row(t.uploads, t.as_row(upload)))

    async def get_upload(self, upload_id: str, *, owner: str | None) -> UploadRecord | None:
        row = self.tables.uploads.get(upload_id)
        return read(UploadRecord, row) if row and owns(owner, row) else None

    def _parts_of(self, upload_id: str) -> list[Row]:
        return sorted((p for p in self.tables.upload_parts.values()
                       if p["upload_id"] == upload_id),
                      key=lambda p: (p["created_at"], p["id"]))

    async def add_part(self, part: UploadPart, *, max_parts: int | None = None,
                       max_bytes: int | None = None) -> bool:
        upload = self.tables.uploads.get(part.upload_id)
        if upload is None or upload["status"] != "pending":
            return False
        count, held = await self.part_totals(part.upload_id)
        if max_parts is not None and count + 1 > max_parts:
            raise PartLimit(what="parts", held=count, limit=max_parts)
        if max_bytes is not None and held + part.bytes > max_bytes:
            raise PartLimit(what="bytes", held=held, limit=max_bytes)
        insert(self.tables.upload_parts, part.id, new_row(t.upload_parts, t.as_row(part)))
        return True

    async def part_totals(self, upload_id: str) -> tuple[int, int]:
        parts = self._parts_of(upload_id)
        return len(parts), sum(p["bytes"] for p in parts)

    async def list_parts(self, upload_id: str) -> list[UploadPart]:
        return [read(UploadPart, p) for p in self._parts_of(upload_id)]

    def _move_upload(self, upload_id: str, *, status: str, to: str,
                     unless: Callable[[Row], bool] = lambda _: False) -> bool:
        """Move the upload from `status` to `to`, as `UPDATE … WHERE status = …` would."""
        row = self.tables.uploads.get(upload_id)
        if row is None or row["status"] != status or unless(row):
            return False
        update(row, status=to)
        return True

    async def claim_upload(self, upload_id: str, *, now: int) -> bool:
        return self._move_upload(upload_id, status="pending", to="completing",
                                 unless=lambda u: u["expires_at"] <= now)

    async def release_upload(self, upload_id: str) -> None:
        self._move_upload(upload_id, status="completing", to="pending")

    async def complete_upload(self, upload_id: str, file: FileRecord) -> bool:
        row = self.tables.uploads.get(upload_id)
        if row is None or row["status"] != "completing":
            return False
        self._add_file(file)
        update(row, status="completed", file_id=file.id)
        return True

    async def end_uploads(self, upload_ids: Sequence[str], *, status: str) -> list[str]:
        return [u for u in dict.fromkeys(upload_ids)
                if self._move_upload(u, status="pending", to=status)]

    async def expire_uploads(self, *, now: int, abandoned_before: int) -> list[str]:
        ended = [u["id"] for u in self.tables.uploads.values()
                 if (u["status"] == "pending" and u["expires_at"] <= now)
                 or (u["status"] == "completing" and u["expires_at"] <= abandoned_before)]
        for upload_id in ended:
            update(self.tables.uploads[upload_id], status="expired")
        return ended

    async def forget_parts(self, upload_id: str) -> None:
        for part in self._parts_of(upload_id):
            del self.tables.upload_parts[part["id"]]


if TYPE_CHECKING:  # mypy holds the fake to both roles; nothing runs
    def _plays_both_roles(store: MemoryStore) -> tuple[ApiStore, WorkerStore]:
        return store, store
