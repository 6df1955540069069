"""Worker deaths are charged to the requests in flight, a request that crashes its worker is
failed alone while kills without a trace fail nothing, short runs keep what they finished, and
a worker whose lease was taken records nothing (DESIGN.md's fencing guarantee), with a manual
clock and two workers."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from typing import Any

import pytest

from batchd.errors import ServiceUnavailable
from batchd.worker import chunks, deaths, requests
from batchd.worker.runner import Worker
from tests.support.harness import Harness
from tests.support.lines import batch_line


async def _ready(harness: Harness, n: int, **extra: Any) -> str:
    created = await harness.create_batch(await harness.upload(
        [batch_line(f"r{i}") for i in range(n)]), **extra)
    assert await harness.worker.run_one_batch_task()
    return str(created["id"])


_lives = itertools.count()


async def _die_with(harness: Harness, in_flight: dict[str, Any], *, chunk_no: int = 0,
                    crash: str | None = None) -> None:
    """What a worker that dies does to the store: claim, charge its predecessor's death (as
    every run does first), record what it starts, vanish; with `crash`, a fatal signal that
    its next life finds in its crash file and records (worker/crashes.py)."""
    store, settings = harness.worker.ctx.store, harness.settings
    life = f"life-{next(_lives)}"
    for _ in range(10):
        claim = await store.claim_chunk(worker="doomed", now=harness.clock.now(),
                                        lease_seconds=settings.lease_seconds)
        assert claim is not None
        chunk, lease = claim
        if chunk.chunk_no == chunk_no:
            strikes = deaths.charge(chunk.strikes, chunk.in_flight, done=())
            assert await store.record_deaths(chunk, lease, strikes=strikes)
            assert await store.reserve_chunk(chunk, lease, in_flight={**in_flight, "life": life})
            if crash is not None:
                assert await store.record_crash(owner="doomed", life=life, cause=crash) == 1
            harness.clock.advance(settings.lease_seconds + 1)
            return
        await store.checkpoint_chunk(chunk, lease, parts=chunk.parts,
                                     committed=chunk.committed, release=True,
                                     now=harness.clock.now(), lease_seconds=0)
    raise AssertionError(f"chunk {chunk_no} was never claimed")


async def test_deaths_beyond_max_attempts_fail_no_request_that_did_not_die_alone(
    harness: Harness,
) -> None:
    batch_id = await _ready(harness, 4)
    # Far more deaths than BATCHD_MAX_ATTEMPTS, in groups: the old rule failed the chunk.
    for _ in range(3 * harness.settings.max_attempts):
        await _die_with(harness, {"ids": ["r0", "r1"], "alone": False})
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}


async def test_a_request_its_worker_crashed_under_alone_is_failed_alone(
    harness: Harness,
) -> None:
    batch_id = await _ready(harness, 4)
    await _die_with(harness, {"ids": ["r0", "r1"], "alone": False}, crash="SIGSEGV")
    await _die_with(harness, {"ids": ["r1"], "alone": True})  # a kill: not counted
    for _ in range(harness.settings.max_attempts):
        await _die_with(harness, {"ids": ["r1"], "alone": True}, crash="SIGABRT")
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    [error] = await harness.lines_of(batch["error_file_id"])
    assert error["custom_id"] == "r1" and error["response"] is None
    assert error["error"]["code"] == "request_failed"
    assert "crashed while running it, alone, 2 times" in error["error"]["message"]
    assert {line["custom_id"] for line in await harness.lines_of(batch["output_file_id"])} == {
        "r0", "r2", "r3"}


async def test_kills_without_a_trace_while_one_request_runs_alone_fail_nothing(
    harness: Harness,
) -> None:
    """Issue 23: the process was killed from outside twice (and more) while one request ran
    alone; with no trace of a crash, that is not the request's doing."""
    batch_id = await _ready(harness, 4)
    for _ in range(2):
        await _die_with(harness, {"ids": ["r0", "r1"], "alone": False})
    for _ in range(3 * harness.settings.max_attempts):
        await _die_with(harness, {"ids": ["r1"], "alone": True})
    await _die_with(harness, {"ids": ["r1"], "alone": True}, crash="SIGSEGV")  # one, < limit
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    chunk = (await harness.worker.ctx.store.list_chunks(batch_id))[0]  # r0 and r1
    assert chunk.strikes is not None and chunk.strikes["r1"] == [9, 7, 1, 1]


async def test_a_crash_is_recorded_only_on_its_own_life_s_records_still_held(
    harness: Harness,
) -> None:
    store, settings = harness.worker.ctx.store, harness.settings
    batch_id = await _ready(harness, 4)  # two chunks of two
    for life in ("life-a", "life-b"):
        claim = await store.claim_chunk(worker="doomed", now=harness.clock.now(),
                                        lease_seconds=settings.lease_seconds)
        assert claim is not None
        chunk, lease = claim
        assert await store.reserve_chunk(chunk, lease, in_flight=deaths.reservation(
            [], [f"r{2 * chunk.chunk_no}"], life=life))
    # A life whose records are all gone (an older crash file): nothing is its crash.
    assert await store.record_crash(owner="doomed", life="life-gone", cause="SIGSEGV") == 0
    assert await store.record_crash(owner="doomed", life="life-b", cause="SIGSEGV") == 1
    # Another worker takes chunk 0 over once its lease lapses: a crash file of its old owner
    # read only now marks nothing (that death was already charged, without a trace).
    harness.clock.advance(settings.lease_seconds + 1)
    taken = await store.claim_chunk(worker="other", now=harness.clock.now(),
                                    lease_seconds=settings.lease_seconds)
    assert taken is not None and taken[0].chunk_no == 0
    assert await store.record_crash(owner="doomed", life="life-a", cause="SIGABRT") == 0
    first, second = await store.list_chunks(batch_id)
    assert deaths.evidence(first.in_flight) is None
    assert second.in_flight is not None and second.in_flight["life"] == "life-b"
    assert deaths.evidence(second.in_flight) == "SIGSEGV"


async def test_a_request_whose_run_raises_is_narrowed_down_logged_and_failed_alone(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    harness.settings.chunk_lines = 40
    real = requests.run_request
    runs: dict[str, int] = {}

    async def run_request(**kwargs: Any) -> Any:
        custom_id = kwargs["custom_id"]
        runs[custom_id] = runs.get(custom_id, 0) + 1
        if custom_id == "r17":
            raise RuntimeError("a bug in the worker")
        return await real(**kwargs)

    monkeypatch.setattr(chunks, "run_request", run_request)
    batch_id = await _ready(harness, 40)
    with caplog.at_level(logging.ERROR):
        await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 40, "completed": 39, "failed": 1}
    [error] = await harness.lines_of(batch["error_file_id"])
    assert error["custom_id"] == "r17" and error["error"]["code"] == "request_failed"
    assert "running request 'r17' raised" in caplog.text
    # Once as usual, once in a suspect group, then alone until the limit: never looping.
    assert runs["r17"] == 2 + harness.settings.max_attempts
    assert all(n == 1 for cid, n in runs.items() if cid != "r17")


async def test_a_run_that_keeps_failing_for_no_request_s_doing_ends_after_max_attempts(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A fault in the run itself, not in any request's (here: starting a request once two
    have finished raises), is counted: after BATCHD_MAX_ATTEMPTS such runs the chunk's
    remaining requests are failed, instead of the chunk going back to run again without end."""
    harness.settings.chunk_lines = 10
    real = chunks.ChunkRun._run_one
    runs: set[int] = set()  # the lease generation of each run

    async def run_one(self: chunks.ChunkRun, *args: Any, **kwargs: Any) -> Any:
        runs.add(self.lease.generation)
        if len(self.finished) >= 2:
            raise RuntimeError("a bug in the scheduler")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(chunks.ChunkRun, "_run_one", run_one)
    batch_id = await _ready(harness, 10)
    with caplog.at_level(logging.ERROR):
        await harness.worker.drain(max_steps=50)  # the run used to be handed back forever
    assert len(runs) == harness.settings.max_attempts  # then no more runs
    assert "its run failed (failure 1 of at most 2)" in caplog.text
    batch = await harness.batch(batch_id)
    assert batch["status"] == "completed"
    output = await harness.lines_of(batch["output_file_id"])
    errors = await harness.lines_of(batch["error_file_id"])
    assert output  # what the failing runs finished is kept...
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"r{i}" for i in range(10))  # ...and each request is once
    assert batch["request_counts"] == {"total": 10, "completed": len(output),
                                       "failed": len(errors)}
    for error in errors:
        assert error["error"]["code"] == "request_failed"
        assert "the worker failed 2 times" in error["error"]["message"]


async def test_a_run_cut_short_by_an_outage_counts_for_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = chunks.ChunkRun._run_one
    outages = iter([ServiceUnavailable("the database is unavailable")] * 3)
    raised: list[Exception] = []

    async def run_one(self: chunks.ChunkRun, *args: Any, **kwargs: Any) -> Any:
        if (outage := next(outages, None)) is not None:
            raised.append(outage)
            raise outage
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(chunks.ChunkRun, "_run_one", run_one)
    batch_id = await _ready(harness, 2)  # one chunk
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    [chunk] = await harness.worker.ctx.store.list_chunks(batch_id)
    assert chunk.failed_runs == 0 and len(raised) == 3


async def test_a_short_run_keeps_what_it_finished(harness: Harness) -> None:
    """What a worker dying half a second into a chunk would leave: its first results saved."""
    harness.settings.chunk_lines = 100
    harness.settings.worker_concurrency = 2  # 0.05 s a request, 2 at once: 2.5 s in all
    harness.settings.checkpoint_results = 4
    worker = Worker(harness.worker.ctx)
    created = await harness.create_batch(await harness.upload(
        [batch_line(f"r{i}", model="slow-model") for i in range(100)]))
    assert await worker.run_one_batch_task()
    run = asyncio.create_task(worker.run_one_chunk())
    # Poll rather than sleep a fixed time: a slow CI host may take longer to start the chunk.
    saved = False
    while not saved and not run.done():
        await asyncio.sleep(0.02)
        [chunk] = await harness.worker.ctx.store.list_chunks(created["id"])
        saved = chunk.done_ok >= 12 and len(chunk.parts) >= 3  # flushed every 4 results
    assert saved and not run.done()  # saved while the chunk still ran, not only at its end
    assert chunk.done_ok < 100
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_a_worker_whose_lease_was_taken_stops_at_once_and_records_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness.settings.chunk_lines = 10
    ctx = harness.worker.ctx
    slow_settings = ctx.settings.model_copy(update={"worker_concurrency": 2})
    first = Worker(dataclasses.replace(ctx, worker_id="first", settings=slow_settings))
    second = Worker(dataclasses.replace(ctx, worker_id="second"))
    real = requests.run_request
    calls: list[str] = []
    stalled = asyncio.Event()

    async def run_request(**kwargs: Any) -> Any:
        calls.append(kwargs["custom_id"])
        if len(calls) <= 2:  # the first worker's two lanes stall (a partitioned host)
            await stalled.wait()
        return await real(**kwargs)

    monkeypatch.setattr(chunks, "run_request", run_request)
    batch_id = await _ready(harness, 10)
    running = asyncio.create_task(first.run_one_chunk())
    while len(calls) < 2:
        await asyncio.sleep(0.01)
    taken = False
    while not taken:  # the first worker may renew just before: lapse it again
        harness.clock.advance(harness.settings.lease_seconds + 1)
        taken = await second.run_one_chunk()
    assert len(calls) == 2 + 10  # the new owner ran every request
    await asyncio.wait_for(running, 5)  # the old one noticed on its next heartbeat
    stalled.set()
    await asyncio.sleep(0.1)
    assert len(calls) == 12  # ...and called the engine no more
    [chunk] = await ctx.store.list_chunks(batch_id)
    generations = {part[kind].split("-g")[1].split("-")[0] for part in chunk.parts
                   for kind in ("ok", "err") if part.get(kind)}
    assert generations == {str(chunk.generation)}
    stray = [key for key in harness.stored_keys("batches/") if "-g1-" in key]
    assert stray == []  # the first owner (generation 1) wrote no part at all
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    output = await harness.lines_of(batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(10))


async def test_a_batch_cancelled_while_suspects_run_reports_each_request_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id = await _ready(harness, 4)
    for _ in range(2):  # r1 was in flight at two deaths: it runs first, in a group
        await _die_with(harness, {"ids": ["r1"], "alone": False})
    real = requests.run_request

    async def run_request(**kwargs: Any) -> Any:
        if kwargs["custom_id"] == "r1":
            await harness.client.post(f"/v1/batches/{batch_id}/cancel")
            await asyncio.sleep(5)  # the heartbeat halts the run long before this ends
        return await real(**kwargs)

    monkeypatch.setattr(chunks, "run_request", run_request)
    await harness.worker.drain()
    batch = await harness.batch(batch_id)
    assert batch["status"] == "cancelled"
    lines = (await harness.lines_of(batch["output_file_id"])
             + await harness.lines_of(batch["error_file_id"]))
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == ["r0", "r1", "r2", "r3"]  # each once
    assert batch["request_counts"]["total"] == 4
