"""One contract, three metadata stores: the same cases on SQLite, on a real PostgreSQL and on
the in-memory fake. This file holds the races; test_store_work.py and test_store_api.py the
rest of the verbs.

Several stores on one database stand for several processes (each `MetadataStore` has its own
connection pool), so races between them are real races in the database.
"""

from __future__ import annotations

import asyncio

import pytest

from batchd import ids
from batchd.backends import DatabaseClock
from batchd.limits.errors import (
    ActiveBatchLimit,
    PartLimit,
    PendingUploadLimit,
    QuotaExceeded,
)
from batchd.store.records import (
    BatchStatus,
    ChunkPlan,
    ChunkProgress,
    FileRecord,
)
from tests.contract.store_builders import (
    LEASE,
    NOW,
    Store,
    Stores,
    batch_record,
    running_batch,
    upload_part,
    upload_record,
)


async def test_concurrent_claimers_never_share_a_chunk(stores: Stores) -> None:
    first = await stores()
    batch_id = await running_batch(first, chunks=60)
    workers = [await stores() for _ in range(6)]

    async def claim_all(n: int, store: Store) -> list[int]:
        got = []
        while (claim := await store.claim_chunk(worker=f"w{n}", now=NOW,
                                                lease_seconds=LEASE)) is not None:
            got.append(claim[0].chunk_no)
        return got

    claimed = await asyncio.gather(*(claim_all(n, s) for n, s in enumerate(workers)))
    every = [chunk for got in claimed for chunk in got]
    assert sorted(every) == list(range(60))  # each chunk once, none twice
    chunks = await first.list_chunks(batch_id)
    assert {c.owner for c in chunks} <= {f"w{n}" for n in range(6)}
    assert all(c.generation == 1 for c in chunks)


async def test_the_last_chunks_committed_at_once_finalize_their_batch(stores: Stores) -> None:
    workers = [await stores() for _ in range(4)]
    for _ in range(5):
        batch_id = await running_batch(workers[0], chunks=4)
        claims = [await w.claim_chunk(worker=f"w{n}", now=NOW, lease_seconds=LEASE)
                  for n, w in enumerate(workers)]
        assert all(claims)
        await asyncio.gather(*(w.commit_chunk(c[0], c[1], parts=[], committed=ChunkProgress(),
                                              now=int(NOW))
                               for w, c in zip(workers, claims, strict=True) if c))
        batch = await workers[0].get_batch(batch_id, owner=None)
        assert batch is not None and batch.status is BatchStatus.FINALIZING


async def test_a_worker_claims_only_chunks_of_models_it_serves(stores: Stores) -> None:
    store = await stores()
    batch_a = await running_batch(store, chunks=2, model="model-a")
    batch_b = await running_batch(store, chunks=2, model="model-b")
    for batch_id, model in ((batch_a, "model-a"), (batch_b, "model-b")):
        for _ in range(2):
            claim = await store.claim_chunk(worker=model, now=NOW, lease_seconds=LEASE,
                                            models=[model], mixed=False,
                                            served=[model])
            assert claim is not None and claim[0].batch_id == batch_id
        assert await store.claim_chunk(worker=model, now=NOW, lease_seconds=LEASE,
                                       models=[model], mixed=False, served=[model]) is None


async def test_only_a_failed_release_counts_a_failed_run(stores: Stores) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=1)
    for failed, expected in ((False, 0), (True, 1), (True, 2)):
        claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
        assert claim is not None
        chunk, lease = claim
        assert await store.checkpoint_chunk(chunk, lease, parts=[], committed=ChunkProgress(),
                                            release=True, failed=failed, now=NOW,
                                            lease_seconds=LEASE)
        [chunk] = await store.list_chunks(batch_id)
        assert chunk.failed_runs == expected
        assert chunk.attempts == expected  # a clean release gives its attempt back
        assert chunk.in_flight is None and chunk.owner is None  # nobody suspected


async def test_a_stale_lease_cannot_heartbeat_checkpoint_or_commit(stores: Stores) -> None:
    old_owner, new_owner = await stores(), await stores()
    await running_batch(old_owner, chunks=1)
    claim = await old_owner.claim_chunk(worker="old", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    chunk, stale = claim
    # The old owner went quiet past its lease; the chunk is claimed again.
    later = NOW + LEASE + 1
    taken = await new_owner.claim_chunk(worker="new", now=later, lease_seconds=LEASE)
    assert taken is not None and taken[1].generation == stale.generation + 1
    part = [{"ok": "batches/x/parts/stale-ok", "err": None}]
    progress = ChunkProgress(n_ok=1)
    assert await old_owner.heartbeat_chunk(chunk, stale, progress=progress, now=later,
                                           lease_seconds=LEASE) is None
    assert not await old_owner.checkpoint_chunk(chunk, stale, parts=part, committed=progress,
                                                now=later, lease_seconds=LEASE)
    assert not await old_owner.checkpoint_chunk(chunk, stale, parts=part, committed=progress,
                                                now=later, lease_seconds=LEASE, release=True)
    assert not await old_owner.commit_chunk(chunk, stale, parts=part, committed=progress,
                                            now=int(later))
    [row] = await new_owner.list_chunks(chunk.batch_id)
    assert row.owner == "new" and row.parts == [] and row.done_ok == 0
    assert await new_owner.commit_chunk(taken[0], taken[1], parts=[], committed=ChunkProgress(),
                                        now=int(later))


async def test_assembly_fences_out_a_worker_whose_lease_lapsed(stores: Stores) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=1)
    claim = await store.claim_chunk(worker="slow", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    await store.request_cancel(batch_id, owner=None, now=int(NOW))
    later = NOW + LEASE + 1  # the slow worker's lease lapsed; the batch is assembled
    assembly = await store.claim_batch_task(worker="assembler", now=later, lease_seconds=LEASE)
    assert assembly is not None and assembly[0].id == batch_id
    late = [{"ok": "batches/x/parts/late", "err": None, "n_ok": 1, "n_err": 0}]
    assert not await store.checkpoint_chunk(claim[0], claim[1], parts=late,
                                            committed=ChunkProgress(n_ok=1), now=later,
                                            lease_seconds=LEASE)
    [chunk] = await store.list_chunks(batch_id)
    assert chunk.parts == []


async def test_racing_creates_cannot_pass_the_unfinished_batch_limit(stores: Stores) -> None:
    api_processes = [await stores() for _ in range(4)]

    async def create(store: Store) -> bool:
        try:
            await store.insert_batch(batch_record("racer"), max_active=3)
        except ActiveBatchLimit:
            return False
        return True

    created = await asyncio.gather(*(create(api_processes[n % 4]) for n in range(12)))
    assert sum(created) == 3


async def test_racing_validations_cannot_pass_the_token_quota(stores: Stores) -> None:
    processes = [await stores() for _ in range(4)]
    batches = [await processes[0].insert_batch(batch_record("quota")) for _ in range(8)]
    leases = []
    for _ in batches:
        claim = await processes[0].claim_batch_task(worker="v", now=NOW, lease_seconds=LEASE)
        assert claim is not None
        leases.append(claim)

    async def validate(n: int) -> bool:
        record, lease = leases[n]
        plan = [ChunkPlan(chunk_no=0, byte_start=0, byte_end=1, line_start=1, n_lines=1)]
        try:
            return await processes[n % 4].start_batch(
                record.id, lease, plans=plan, total=1, model="m", tokens={"m": 300},
                token_limit=1000, now=int(NOW))
        except QuotaExceeded:
            return False

    started = await asyncio.gather(*(validate(n) for n in range(8)))
    assert sum(started) == 3  # 3 x 300 tokens fit under 1000; a fourth would not


async def test_paging_stays_ordered_across_processes(stores: Stores) -> None:
    processes = [await stores() for _ in range(3)]

    async def upload(n: int) -> str:
        record = FileRecord(id=ids.file_id(), owner="pager", purpose="batch",
                            filename=f"{n}.jsonl", bytes=1, created_at=int(NOW),
                            expires_at=None, status="processed", blob_key=f"files/{n}")
        return (await processes[n % 3].insert_file(record)).id

    await asyncio.gather(*(upload(n) for n in range(30)))
    seen: list[str] = []
    after = None
    while True:
        page, more = await processes[1].list_files(owner="pager", purpose=None, limit=7,
                                                   ascending=True, after=after)
        seen += [f.id for f in page]
        if not more:
            break
        after = page[-1].id
    everything, _ = await processes[2].list_files(owner="pager", purpose=None, limit=100,
                                                  ascending=True, after=None)
    assert seen == [f.id for f in everything] and len(set(seen)) == 30
    seqs = [f.seq for f in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == 30


async def test_housekeeping_turns_go_to_one_process_per_period(stores: Stores) -> None:
    processes = [await stores() for _ in range(4)]
    turns = await asyncio.gather(*(p.take_turn("expiry", now=NOW, every=5) for p in processes))
    assert sum(turns) == 1
    assert not await processes[0].take_turn("expiry", now=NOW + 4, every=5)
    assert await processes[1].take_turn("expiry", now=NOW + 5, every=5)


async def test_the_database_clock_corrects_a_skewed_host(
    stores: Stores, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await stores()
    clock = DatabaseClock(store)
    truth = await store.database_time()
    if not store.postgres:
        assert abs(clock.now() - truth) < 1  # SQLite: this host's clock is the database's
        return
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host runs an hour fast
    await clock.sync()
    assert abs(clock.now() - await store.database_time()) < 0.5


async def test_a_completion_and_a_cancel_racing_on_one_upload_are_ordered(
    stores: Stores,
) -> None:
    """Exactly one of a claim (completion) and a cancel moves the upload; a part arriving
    after either is refused, so no part can be deleted or added under a completion."""
    completer, canceller = await stores(), await stores()
    for _ in range(8):
        upload = upload_record()
        await completer.insert_upload(upload)
        claimed, cancelled = await asyncio.gather(
            completer.claim_upload(upload.id, now=int(NOW)),
            canceller.end_uploads([upload.id], status="cancelled"))
        assert claimed != bool(cancelled)
        assert not await canceller.add_part(upload_part(upload, 1))
        if claimed:
            assert await canceller.end_uploads([upload.id], status="cancelled") == []
            # Past its hour, but not yet abandoned: the expiry leaves the claim alone.
            assert upload.id not in await canceller.expire_uploads(
                now=int(NOW) + 3600, abandoned_before=int(NOW))
            await completer.release_upload(upload.id)  # a failed completion gives it back
            assert await canceller.add_part(upload_part(upload, 1))


async def test_racing_parts_cannot_pass_an_uploads_byte_or_part_limit(stores: Stores) -> None:
    processes = [await stores() for _ in range(4)]
    upload = upload_record(size=10)
    await processes[0].insert_upload(upload)

    async def add(n: int, size: int, **limits: int) -> bool:
        try:
            return await processes[n % 4].add_part(upload_part(upload, size), **limits)
        except PartLimit:
            return False

    added = await asyncio.gather(*(add(n, 3, max_bytes=10, max_parts=100) for n in range(8)))
    assert sum(added) == 3  # 3 x 3 bytes fit in 10; a fourth would not
    assert await processes[1].part_totals(upload.id) == (3, 9)
    added = await asyncio.gather(*(add(n, 0, max_bytes=10, max_parts=5) for n in range(8)))
    assert sum(added) == 2 and (await processes[2].part_totals(upload.id))[0] == 5


async def test_racing_creates_cannot_pass_the_pending_upload_limit(stores: Stores) -> None:
    api_processes = [await stores() for _ in range(4)]

    async def create(n: int) -> bool:
        try:
            await api_processes[n % 4].insert_upload(upload_record("racer"), max_pending=3)
        except PendingUploadLimit:
            return False
        return True

    created = await asyncio.gather(*(create(n) for n in range(12)))
    assert sum(created) == 3
