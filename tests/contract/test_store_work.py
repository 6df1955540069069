"""The store contract for the worker's verbs (`WorkerStore`): leases fenced by generation,
claims and their order, checkpoints and commits of write-once parts, deaths and crashes, and
the stops and expiries that end a batch early. Each case runs on every store (conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from batchd.limits.errors import QuotaExceeded
from batchd.store.metadata import MetadataStore
from batchd.store.records import (
    BatchStatus,
    ChunkProgress,
    ChunkState,
    StopReason,
)
from tests.contract.store_builders import (
    LEASE,
    NOW,
    Store,
    Stores,
    batch_record,
    claimed_chunk,
    endpoint,
    file_record,
    plans,
    running_batch,
    validating_batch,
)
from tests.support.backends import PostgresServer

LATER = NOW + LEASE + 1  # every lease taken at NOW has lapsed


async def test_a_batch_task_is_leased_to_one_worker_at_a_time(stores: Stores) -> None:
    store = await stores()
    record, lease = await validating_batch(store, worker="w1")
    assert lease.generation == 1
    assert await store.claim_batch_task(worker="w2", now=NOW, lease_seconds=LEASE) is None
    renewed = await store.renew_batch_lease(record.id, lease, now=NOW + 20, lease_seconds=LEASE)
    assert renewed is not None and renewed.id == record.id
    # Renewed: still held past the first lease's end.
    assert await store.claim_batch_task(worker="w2", now=LATER, lease_seconds=LEASE) is None
    await store.release_batch_lease(record.id, lease)
    taken = await store.claim_batch_task(worker="w2", now=NOW + 21, lease_seconds=LEASE)
    assert taken is not None and taken[1].generation == 2
    # The first worker's lease is stale: nothing it does lands.
    assert await store.renew_batch_lease(record.id, lease, now=NOW + 22,
                                         lease_seconds=LEASE) is None
    assert not await store.start_batch(record.id, lease, plans=plans(1), total=1, model="m",
                                       tokens={}, token_limit=None, now=int(NOW))
    assert not await store.fail_batch(record.id, lease, errors=[], now=int(NOW))
    await store.release_batch_lease(record.id, lease)  # a no-op: not its lease
    assert await store.claim_batch_task(worker="w3", now=NOW + 23, lease_seconds=LEASE) is None


async def test_batch_tasks_are_claimed_most_urgent_first(stores: Stores) -> None:
    store = await stores()
    late = await store.insert_batch(batch_record(expires_at=int(NOW) + 7200))
    soon = await store.insert_batch(batch_record(expires_at=int(NOW) + 3600))
    order = [await store.claim_batch_task(worker="w", now=NOW, lease_seconds=LEASE)
             for _ in range(2)]
    assert [c[0].id for c in order if c] == [soon.id, late.id]


async def test_a_failed_validation_ends_the_batch_once_and_announces_it(stores: Stores) -> None:
    store = await stores()
    hook = endpoint(events=("batch.failed",))
    assert await store.insert_endpoint(hook, max_per_owner=5)
    record, lease = await validating_batch(store)
    errors = [{"code": "invalid_json", "line": 1, "message": "not JSON"}]
    assert await store.fail_batch(record.id, lease, errors=errors, now=int(NOW) + 5)
    assert not await store.fail_batch(record.id, lease, errors=[], now=int(NOW) + 6)
    failed = await store.get_batch(record.id, owner=None)
    assert failed is not None and failed.status is BatchStatus.FAILED
    assert failed.errors == errors and failed.failed_at == int(NOW) + 5
    [(delivery, event, to)] = await store.claim_deliveries(
        now=NOW + 5, lease_seconds=LEASE, limit=10, per_owner=10, per_endpoint=10)
    assert (event.type, event.data, to.id) == ("batch.failed", {"id": record.id}, hook.id)
    assert delivery.state == "pending" and delivery.attempts == 0


async def test_a_batch_with_no_requests_goes_straight_to_assembly(stores: Stores) -> None:
    store = await stores()
    record, lease = await validating_batch(store)
    assert await store.start_batch(record.id, lease, plans=[], total=0, model=None, tokens={},
                                   token_limit=None, now=int(NOW))
    started = await store.get_batch(record.id, owner=None)
    assert started is not None and started.status is BatchStatus.FINALIZING
    assert started.finalizing_at == int(NOW)
    assembly = await store.claim_batch_task(worker="a", now=NOW, lease_seconds=LEASE)
    assert assembly is not None and assembly[0].id == record.id


async def test_a_quota_counts_only_the_owners_unfinished_batches_per_model(
    stores: Stores,
) -> None:
    store = await stores()

    async def start(owner: str, model: str) -> bool:
        record, lease = await validating_batch(store, batch_record(owner))
        return await store.start_batch(record.id, lease, plans=plans(1), total=1, model=model,
                                       tokens={model: 600}, token_limit=1000, now=int(NOW))

    first, lease = await validating_batch(store)
    assert await store.start_batch(first.id, lease, plans=plans(1), total=1, model="m",
                                   tokens={"m": 600}, token_limit=1000, now=int(NOW))
    refused, lease = await validating_batch(store)
    with pytest.raises(QuotaExceeded) as over:
        await store.start_batch(refused.id, lease, plans=plans(1), total=1, model="m",
                                tokens={"m": 600}, token_limit=1000, now=int(NOW))
    assert (over.value.model, over.value.enqueued, over.value.requested,
            over.value.limit) == ("m", 600, 600, 1000)
    unchanged = await store.get_batch(refused.id, owner=None)
    assert unchanged is not None and unchanged.status is BatchStatus.VALIDATING
    assert await start("alice", "other") and await start("bob", "m")
    # The first batch ending (here cancelled and assembled) gives its tokens back.
    await store.request_cancel(first.id, owner=None, now=int(NOW))
    assembly = await store.claim_batch_task(worker="a", now=NOW, lease_seconds=LEASE)
    assert assembly is not None and assembly[0].id == first.id
    assert await store.finish_batch(first.id, assembly[1], status=BatchStatus.CANCELLED,
                                    output_file=None, error_file=None,
                                    counts=ChunkProgress(), now=int(NOW))
    assert await start("alice", "m")


async def test_a_chunk_run_records_its_parts_once_and_the_last_commit_finalizes(
    stores: Stores,
) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=2)
    claims = [await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
              for _ in range(2)]
    assert [c[0].chunk_no for c in claims if c] == [0, 1]
    (first, lease), (second, second_lease) = [c for c in claims if c]
    assert first.state is ChunkState.LEASED and first.attempts == 1
    live = ChunkProgress(n_ok=2, n_err=1, input_tokens=30, output_tokens=40, cached_tokens=5)
    batch = await store.heartbeat_chunk(first, lease, progress=live, now=NOW + 1,
                                        lease_seconds=LEASE)
    assert batch is not None and batch.id == batch_id and batch.stop_reason is None
    assert (await store.live_progress([batch_id]))[batch_id] == live
    part = {"ok": "batches/x/parts/0-ok", "err": None, "n_ok": 1, "n_err": 0}
    assert await store.checkpoint_chunk(first, lease, parts=[part],
                                        committed=ChunkProgress(n_ok=1), now=NOW + 2,
                                        lease_seconds=LEASE)
    assert await store.heartbeat_chunk(second, second_lease, progress=ChunkProgress(),
                                       now=NOW + 2, lease_seconds=LEASE)
    # Renewed: nobody else may take either chunk when their first leases end.
    assert await store.claim_chunk(worker="x", now=LATER, lease_seconds=LEASE) is None
    done = ChunkProgress(n_ok=3, n_err=1)
    parts = [part, {"ok": "batches/x/parts/1-ok", "err": None, "n_ok": 2, "n_err": 1}]
    assert await store.commit_chunk(first, lease, parts=parts, committed=done, now=int(NOW) + 3)
    # Write-once: a second commit, checkpoint or heartbeat of a done chunk changes nothing.
    assert not await store.commit_chunk(first, lease, parts=[], committed=ChunkProgress(),
                                        now=int(NOW) + 4)
    assert not await store.checkpoint_chunk(first, lease, parts=[], committed=ChunkProgress(),
                                            now=NOW + 4, lease_seconds=LEASE)
    assert await store.heartbeat_chunk(first, lease, progress=ChunkProgress(), now=NOW + 4,
                                       lease_seconds=LEASE) is None
    row = await store.get_chunk(batch_id, 0)
    assert row is not None and row.state is ChunkState.DONE and row.parts == parts
    assert row.committed == done
    running = await store.get_batch(batch_id, owner=None)
    assert running is not None and running.status is BatchStatus.IN_PROGRESS
    assert await store.commit_chunk(second, second_lease, parts=[], committed=ChunkProgress(),
                                    now=int(NOW) + 5)
    finished = await store.get_batch(batch_id, owner=None)
    assert finished is not None and finished.status is BatchStatus.FINALIZING
    assert finished.finalizing_at == int(NOW) + 5


async def test_a_clean_release_gives_the_attempt_back_and_others_do_not(
    stores: Stores,
) -> None:
    store = await stores()
    batch_id, chunk, lease = await claimed_chunk(store)
    kept = [{"ok": "batches/x/parts/a", "err": None, "n_ok": 1, "n_err": 0}]
    assert await store.checkpoint_chunk(chunk, lease, parts=kept,
                                        committed=ChunkProgress(n_ok=1), now=NOW,
                                        lease_seconds=LEASE, release=True)
    [row] = await store.list_chunks(batch_id)
    assert row.state is ChunkState.PENDING and row.owner is None and row.attempts == 0
    assert row.parts == kept and row.done_ok == 1
    again = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert again is not None and again[0].attempts == 1 and again[1].generation == 2
    # Live counts restart from what was committed.
    assert (await store.live_progress([batch_id]))[batch_id] == ChunkProgress(n_ok=1)
    crashed = {"ids": ["r1"], "alone": True, "life": "life-1"}
    assert await store.checkpoint_chunk(again[0], again[1], parts=kept,
                                        committed=ChunkProgress(n_ok=1), now=NOW,
                                        lease_seconds=LEASE, release=True, crashed=crashed)
    [row] = await store.list_chunks(batch_id)
    assert row.state is ChunkState.PENDING and row.attempts == 1 and row.in_flight == crashed
    assert row.failed_runs == 0
    # A run that failed for no request's doing counts, as an attempt and as a failed run.
    third = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert third is not None and third[0].attempts == 2
    assert await store.checkpoint_chunk(third[0], third[1], parts=kept,
                                        committed=ChunkProgress(n_ok=1), now=NOW,
                                        lease_seconds=LEASE, release=True, failed=True)
    [row] = await store.list_chunks(batch_id)
    assert (row.state, row.attempts, row.failed_runs) == (ChunkState.PENDING, 2, 1)
    assert row.in_flight is None


async def test_a_dead_workers_requests_in_flight_are_charged_to_the_next_run(
    stores: Stores,
) -> None:
    store = await stores()
    batch_id, chunk, lease = await claimed_chunk(store, worker="w1")
    in_flight = {"ids": ["r1", "r2"], "alone": False, "life": "life-1"}
    assert await store.reserve_chunk(chunk, lease, in_flight=in_flight)
    assert await store.record_crash(owner="w1", life="life-2", cause="SIGSEGV") == 0
    assert await store.record_crash(owner="w1", life="life-1", cause="SIGSEGV") == 1
    taken = await store.claim_chunk(worker="w2", now=LATER, lease_seconds=LEASE)
    assert taken is not None and taken[1].generation == lease.generation + 1
    assert taken[0].attempts == 2 and taken[0].in_flight == {**in_flight, "crash": "SIGSEGV"}
    # The stale run can no longer reserve; the new one records the deaths once.
    assert not await store.reserve_chunk(chunk, lease, in_flight=in_flight)
    assert not await store.record_deaths(chunk, lease, strikes={"r1": [9, 9, 9, 9]})
    strikes = {"r1": [1, 0, 1, 0], "r2": [1, 0, 1, 0]}
    assert await store.record_deaths(taken[0], taken[1], strikes=strikes)
    [row] = await store.list_chunks(batch_id)
    assert row.strikes == strikes and row.in_flight is None
    # A crash recorded after the chunk changed hands marks nothing.
    assert await store.record_crash(owner="w1", life="life-1", cause="SIGABRT") == 0


async def test_a_restarted_worker_takes_back_what_its_past_life_held(stores: Stores) -> None:
    store = await stores()
    batch_id, chunk, lease = await claimed_chunk(store, worker="w1")
    pending = await store.insert_batch(batch_record())
    task = await store.claim_batch_task(worker="w1", now=NOW, lease_seconds=LEASE)
    assert task is not None and task[0].id == pending.id
    in_flight = {"ids": ["r1"], "alone": True, "life": "life-1"}
    assert await store.reserve_chunk(chunk, lease, in_flight=in_flight)
    assert await store.release_leases_of("w1") == 2
    assert await store.release_leases_of("w1") == 0
    # Both are free at once, without waiting for the leases to lapse.
    again = await store.claim_chunk(worker="w1", now=NOW, lease_seconds=LEASE)
    assert again is not None and again[0].batch_id == batch_id
    assert again[0].in_flight == in_flight  # the next run charges the death to it
    task = await store.claim_batch_task(worker="w1", now=NOW, lease_seconds=LEASE)
    assert task is not None and task[0].id == pending.id


async def test_claims_go_first_to_the_owner_with_the_least_running(stores: Stores) -> None:
    store = await stores()
    alice = await running_batch(store, chunks=3, owner="alice", expires_in=3600)
    bob = await running_batch(store, chunks=1, owner="bob", expires_in=7200)
    claimed = []
    while (claim := await store.claim_chunk(worker="w", now=NOW,
                                            lease_seconds=LEASE)) is not None:
        claimed.append((claim[0].batch_id, claim[0].chunk_no))
    assert claimed == [(alice, 0), (bob, 0), (alice, 1), (alice, 2)]


async def test_claimers_at_once_take_every_chunk_once(stores: Stores) -> None:
    # Processes claiming at the same moment: each takes a chunk nobody else holds (on
    # PostgreSQL, past the rows the others have locked), and between them they take all.
    first = await stores()
    big = await running_batch(first, chunks=6, owner="alice")
    small = await running_batch(first, chunks=2, owner="bob")
    claimers = [first, *[await stores() for _ in range(3)]]

    async def claim_all(store: Store, worker: str) -> list[tuple[str, int]]:
        taken = []
        while (claim := await store.claim_chunk(worker=worker, now=NOW,
                                                lease_seconds=LEASE)) is not None:
            taken.append((claim[0].batch_id, claim[0].chunk_no))
        return taken

    taken = await asyncio.gather(*(claim_all(store, f"w{n}")
                                   for n, store in enumerate(claimers)))
    claimed = [chunk for each in taken for chunk in each]
    assert sorted(claimed) == sorted([(big, n) for n in range(6)] + [(small, n) for n in range(2)])
    assert await first.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE) is None


async def test_a_claim_passes_a_batch_whose_chunks_other_claimers_hold(
    postgres_server: PostgresServer,
) -> None:
    # PostgreSQL only (SQLite has one writer): another transaction holds the only chunk of
    # the batch ranked first, so the claim takes the next batch's rather than none.
    url = postgres_server.create_database()
    store = MetadataStore(url)
    await store.migrate()
    first = await running_batch(store, chunks=1, owner="alice", expires_in=3600)
    second = await running_batch(store, chunks=1, owner="bob", expires_in=7200)
    other = create_async_engine(url)
    try:
        async with other.begin() as conn:
            await conn.execute(text("SELECT 1 FROM chunks WHERE batch_id = :id FOR UPDATE"),
                               {"id": first})
            claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
            assert claim is not None and claim[0].batch_id == second
        claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
        assert claim is not None and claim[0].batch_id == first
    finally:
        await other.dispose()
        await store.close()


async def test_a_worker_claims_only_the_models_it_may_run(stores: Stores) -> None:
    store = await stores()
    mixed = await running_batch(store, chunks=1, model=None)
    gone = await running_batch(store, chunks=1, model="retired")
    new = await running_batch(store, chunks=2, model="new", owner="carol")

    async def claim(**filters: object) -> str | None:
        got = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE,
                                      models=["m"], served=["m", "new"], **filters)  # type: ignore[arg-type]
        return got[0].batch_id if got else None

    # Without `mixed`, neither several models nor a model no longer served.
    assert await claim(mixed=False) is None
    assert {await claim(mixed=True), await claim(mixed=True)} == {mixed, gone}
    # A newcomer model, only while its owner has nothing running.
    assert await claim(mixed=False, newcomers=["new"]) == new
    assert await claim(mixed=False, newcomers=["new"]) is None


async def test_a_stopped_batch_hands_out_no_more_chunks_and_goes_to_assembly(
    stores: Stores,
) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=2)
    claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    errors = [{"code": "input_gone", "message": "the input file vanished"}]
    await store.stop_batch(batch_id, reason=StopReason.FAILED, errors=errors)
    await store.stop_batch(batch_id, reason=StopReason.CANCELLED)  # the first stop stays
    assert await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE) is None
    stopped = await store.heartbeat_chunk(claim[0], claim[1], progress=ChunkProgress(),
                                          now=NOW + 1, lease_seconds=LEASE)
    assert stopped is not None and stopped.stop_reason is StopReason.FAILED
    assert stopped.errors == errors and stopped.status is BatchStatus.IN_PROGRESS
    # Assembly waits for the live chunk, then fences it out.
    assert await store.claim_batch_task(worker="a", now=NOW + 1, lease_seconds=LEASE) is None
    assembly = await store.claim_batch_task(worker="a", now=LATER + 1, lease_seconds=LEASE)
    assert assembly is not None and assembly[0].id == batch_id
    assert not await store.commit_chunk(claim[0], claim[1], parts=[], now=int(LATER),
                                        committed=ChunkProgress())


async def test_expiry_flags_only_running_batches_past_their_window(stores: Stores) -> None:
    store = await stores()
    running = await running_batch(store, chunks=1, expires_in=60)
    validating = await store.insert_batch(batch_record(expires_at=int(NOW) + 60))
    later = await running_batch(store, chunks=1, expires_in=3600)
    cancelled = await running_batch(store, chunks=1, expires_in=60)
    await store.request_cancel(cancelled, owner=None, now=int(NOW))
    assert await store.mark_expired(now=int(NOW) + 59) == 0
    assert await store.mark_expired(now=int(NOW) + 60) == 2
    assert await store.mark_expired(now=int(NOW) + 61) == 0
    reasons = {b: (await store.get_batch(b, owner=None)).stop_reason  # type: ignore[union-attr]
               for b in (running, validating.id, later, cancelled)}
    assert reasons == {running: StopReason.EXPIRED, validating.id: StopReason.EXPIRED,
                       later: None, cancelled: StopReason.CANCELLED}


async def test_assembly_publishes_the_result_files_with_the_final_status_once(
    stores: Stores,
) -> None:
    store = await stores()
    hook = endpoint(events=("batch.completed", "batch.failed"))
    assert await store.insert_endpoint(hook, max_per_owner=5)
    # A batch stopped while validating is finished with the request count it never got.
    record, lease = await validating_batch(store)
    assert await store.finish_batch(record.id, lease, status=BatchStatus.CANCELLED,
                                    output_file=None, error_file=None,
                                    counts=ChunkProgress(), now=int(NOW), total=3)
    done = await store.get_batch(record.id, owner=None)
    assert done is not None and done.status is BatchStatus.CANCELLED and done.total == 3
    batch_id, chunk, lease = await claimed_chunk(store)
    assert await store.commit_chunk(chunk, lease, parts=[], now=int(NOW),
                                    committed=ChunkProgress(n_ok=1))
    assembly = await store.claim_batch_task(worker="a", now=NOW, lease_seconds=LEASE)
    assert assembly is not None and assembly[0].id == batch_id
    output = file_record(purpose="batch_output")
    counts = ChunkProgress(n_ok=1, input_tokens=7, output_tokens=9, cached_tokens=2)
    assert await store.get_file(output.id, owner=None) is None
    assert await store.finish_batch(batch_id, assembly[1], status=BatchStatus.COMPLETED,
                                    output_file=output, error_file=None, counts=counts,
                                    now=int(NOW) + 9)
    assert not await store.finish_batch(batch_id, assembly[1], status=BatchStatus.FAILED,
                                        output_file=None, error_file=None,
                                        counts=ChunkProgress(), now=int(NOW) + 10)
    finished = await store.get_batch(batch_id, owner="alice")
    assert finished is not None and finished.status is BatchStatus.COMPLETED
    assert finished.output_file_id == output.id and finished.error_file_id is None
    assert finished.completed_at == int(NOW) + 9 and finished.completed == 1
    assert (finished.input_tokens, finished.output_tokens, finished.cached_tokens) == (7, 9, 2)
    published = await store.get_file(output.id, owner="alice")
    assert published is not None and published.purpose == "batch_output"
    events = await store.claim_deliveries(now=NOW + 9, lease_seconds=LEASE, limit=10,
                                          per_owner=10, per_endpoint=10)
    assert [e.type for _, e, _ in events] == ["batch.completed"]  # not the cancel: unsubscribed


async def test_housekeeping_turns_follow_the_period(stores: Stores) -> None:
    store = await stores()
    assert not await store.take_turn("no-such-job", now=NOW, every=5)
    assert await store.take_turn("expiry", now=NOW, every=60)
    assert not await store.take_turn("expiry", now=NOW + 59, every=60)
    assert await store.take_turn("expiry", now=NOW + 60, every=60)


async def test_a_chunk_run_once_spans_its_claim_to_its_commit(stores: Stores) -> None:
    # What a file's estimate measures a model's throughput by; a chunk taken over after a
    # lapsed lease is left out (its span holds the time nobody ran it).
    store = await stores()
    batch_id = await running_batch(store, chunks=2)
    once = await store.claim_chunk(worker="w1", now=NOW, lease_seconds=LEASE)
    twice = await store.claim_chunk(worker="w1", now=NOW, lease_seconds=LEASE)
    assert once is not None and twice is not None
    assert await store.recent_chunk_runs(models=["m"], since=NOW - 1) == []  # not done yet
    assert await store.commit_chunk(once[0], once[1], parts=[],
                                    committed=ChunkProgress(n_ok=3, n_err=1, output_tokens=9),
                                    now=NOW + 2.5)
    again = await store.claim_chunk(worker="w2", now=LATER, lease_seconds=LEASE)
    assert again is not None and again[0].chunk_no == twice[0].chunk_no
    assert await store.commit_chunk(again[0], again[1], parts=[],
                                    committed=ChunkProgress(n_ok=1), now=LATER + 1)
    (run,) = await store.recent_chunk_runs(models=["alias", "m"], since=NOW - 1)
    assert (run.started_at, run.finished_at, run.lines, run.output_tokens) == (
        NOW, NOW + 2.5, 4, 9)
    assert await store.recent_chunk_runs(models=["m"], since=NOW + 3) == []
    assert await store.recent_chunk_runs(models=["other"], since=NOW - 1) == []
    # The batch's progress over time: each chunk when it was done, in that order.
    assert [(d.finished_at, d.done_ok, d.done_err, d.done_output_tokens)
            for d in await store.chunks_done(batch_id)] == [
        (NOW + 2.5, 3, 1, 9), (LATER + 1, 1, 0, 0)]
