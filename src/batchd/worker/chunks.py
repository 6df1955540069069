"""Executing one leased chunk: run its requests, heartbeat, checkpoint, commit fenced.

This module schedules: which requests run, in what order, how many at once, and when the run
stops. What they produce goes to a `PartLedger` (parts.py), which saves it durably, once; a
resumed chunk skips the requests its committed parts hold. Before requests start, the run
records them as in flight, so that a worker's death is charged to them and not to the whole
chunk (see deaths.py), and only a crash with a trace can get one failed. A run that fails for
no request's doing (a fault in batchd) is counted on the chunk instead: after `max_attempts`
of them, its remaining requests are failed rather than run again without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from batchd import metrics
from batchd.backends import outage
from batchd.batches import results
from batchd.engines.base import EngineUnavailable
from batchd.serving.chat import CHAT
from batchd.serving.endpoints import OPERATIONS
from batchd.shielding import finish_even_if_cancelled
from batchd.store.blobs import BlobMissing
from batchd.store.records import (
    BatchRecord,
    Chunk,
    Lease,
    StopReason,
)
from batchd.worker import deaths
from batchd.worker.capacity import MIXED, Capacity, ModelGate
from batchd.worker.context import WorkerContext
from batchd.worker.gate import RequestGate
from batchd.worker.inputs import Request, read_requests
from batchd.worker.parts import PartLedger, done_custom_ids
from batchd.worker.prompt_order import prefix_key
from batchd.worker.requests import run_request
from batchd.worker.watchdog import Guard, Watchdog

log = logging.getLogger(__name__)


class StartWindow:
    """How many requests a run records as in flight ahead of starting them.

    It grows while windows are used up within a checkpoint interval (a fast engine records
    rarely) and shrinks when one lasts far longer (a slow engine keeps its suspects few after
    a death). A worker's runs share one, so each chunk starts from what the last one learnt."""

    def __init__(self, lanes: int) -> None:
        self.floor, self.ceiling = 2 * lanes, 64 * lanes
        self.size = self.floor

    def adapt(self, lasted: float, interval: float) -> int:
        if lasted < interval:
            self.size = min(2 * self.size, self.ceiling)
        elif lasted > 4 * interval:
            self.size = max(self.size // 2, self.floor)
        return self.size


class ChunkRun:
    """One attempt at one chunk, under one lease."""

    def __init__(self, ctx: WorkerContext, chunk: Chunk, lease: Lease, *, gate: RequestGate,
                 capacity: Capacity, lanes: int, stopping: asyncio.Event,
                 window: StartWindow | None = None, key: str | None = None,
                 endpoint: str = CHAT.endpoint) -> None:
        self.ctx = ctx
        self.operation = OPERATIONS[endpoint]
        self.chunk = chunk
        self.lease = lease
        self.gate = gate
        self.capacity = capacity
        self.key = key  # the model (or MIXED) the worker counts this chunk against
        self.stopping = stopping
        self.ledger = PartLedger(ctx, chunk, lease)
        self.lost = False
        self.stop_batch: BatchRecord | None = None
        self.finished: set[str] = set()
        self.flying: dict[str, None] = {}  # started, not finished (insertion-ordered)
        self.crashed: list[str] = []  # requests whose run raised: charged as a death
        self.failed = False  # the run itself failed, for no request's doing
        self.todo: list[Request] = []
        self._body: asyncio.Task[None] | None = None
        self._lanes = lanes
        self.unreachable: set[str] = set()  # models whose engine could not be reached
        self._next = 0
        self._reserved_upto = 0
        self._reserved_at: float | None = None
        self._window = window or StartWindow(self._lanes)
        self._reserve_lock = asyncio.Lock()
        self._alone = False  # running one suspect with nothing else of the worker
        self.watchdog = Watchdog(ctx.settings.request_timeout_seconds)
        self.tally = metrics.Finished()  # flushed to the counters each beat and at the end
        self._models: dict[str, tuple[str | None, ModelGate | None]] = {}  # see _model_of
        self._retries = ctx.settings.request_retries
        self._save_after = ctx.settings.checkpoint_results

    async def run(self, input_key: str) -> None:
        try:
            requests = await asyncio.to_thread(read_requests, self.ctx, input_key, self.chunk)
            done = await asyncio.to_thread(done_custom_ids, self.ctx, self.ledger.parts)
        except BlobMissing as exc:
            await self._input_lost(str(exc))
            return
        strikes = await self._autopsy(done)
        if strikes is None:
            return
        poison = deaths.poisoned(strikes, self.ctx.settings.max_attempts) - done
        for cid in sorted(poison):
            crashes = deaths.crashes_alone(strikes, cid)
            log.error("batch %s: request %r crashed its worker %d times running alone; "
                      "failing it", self.chunk.batch_id, cid, crashes)
            self.ledger.add_error_line(results.stop_error_line(
                cid, code="request_failed", message=deaths.poison_message(crashes)))
            self.finished.add(cid)
        # Requests that share a model and a leading prompt go to the engine together, so its
        # prefix cache serves them one after another instead of thrashing between prompts.
        todo = sorted((r for r in requests if r[0] not in done and r[0] not in poison)
                      if done or poison else requests, key=prefix_key(self.operation))
        if self.chunk.failed_runs >= self.ctx.settings.max_attempts:
            await self._give_up(todo)
            return
        first, self.todo, last = deaths.isolation_groups(todo, strikes, self._lanes)
        body = self._body = asyncio.create_task(self._execute(first, last), name="chunk-body")
        helpers = [asyncio.create_task(self._heartbeat(), name="chunk-heartbeat"),
                   asyncio.create_task(self._keep_saving(), name="chunk-flusher"),
                   asyncio.create_task(self.watchdog.run(), name="chunk-watchdog")]
        try:
            await asyncio.wait([body])
        except asyncio.CancelledError:
            # Shutdown ran out of grace: keep what finished, hand the rest back (we cut the
            # requests short ourselves: nobody is suspected).
            body.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await body
            await finish_even_if_cancelled(self.ledger.checkpoint(release=True))
            raise
        finally:
            self.tally.flush()  # what the body finished, however it ended
            for helper in helpers:
                helper.cancel()
            for outcome in await asyncio.gather(*helpers, return_exceptions=True):
                if not isinstance(outcome, asyncio.CancelledError | type(None)):
                    log.error("chunk %s/%s: a helper failed", self.chunk.batch_id,
                              self.chunk.chunk_no, exc_info=outcome)
        failure = None if body.cancelled() else body.exception()
        if failure is not None:
            # Not a request's doing (those are caught one by one in _run_one), so nobody is
            # suspected. An outage is nobody's fault and counts for nothing; anything else is
            # a fault in batchd, counted (_finish) so that one that persists ends after
            # `max_attempts` runs instead of looping without end.
            reason = _outage_of(failure)
            self.failed = reason is None
            log.error("chunk %s/%s: its run failed (%s); handing the rest back",
                      self.chunk.batch_id, self.chunk.chunk_no,
                      reason or f"failure {self.chunk.failed_runs + 1} of at most "
                                f"{self.ctx.settings.max_attempts}", exc_info=failure)
        await self._finish([r[0] for r in todo])  # every request, suspects included

    async def _finish(self, todo_ids: list[str]) -> None:
        if self.lost:
            log.warning("lost the lease on chunk %s/%s; its unsaved results are dropped",
                        self.chunk.batch_id, self.chunk.chunk_no)
            metrics.LEASES_LOST.inc()
            return
        stop = self.stop_batch.stop_reason if self.stop_batch else None
        unfinished = [cid for cid in todo_ids if cid not in self.finished]
        if stop is not None:
            code = stop.error_code
            for cid in unfinished:
                self.ledger.add_error_line(results.stop_error_line(
                    cid, code=code, message=results.STOP_MESSAGES[code]))
        elif self.crashed or (self.failed and unfinished):
            # Counted as a failed attempt: charged to the requests that raised (the exception
            # is the trace: it points at the request, as a fatal signal would), and to the
            # chunk if the run itself failed. The rest of the chunk runs again.
            crashed = deaths.with_crash(deaths.reservation(
                self.crashed, [], alone=self._alone and len(self.crashed) == 1,
                life=self.ctx.life), "exception") if self.crashed else None
            await self.ledger.checkpoint(release=True, crashed=crashed, failed=self.failed)
            return
        elif unfinished:
            # Handed back unharmed, no attempt counted: the worker is stopping, an engine
            # cannot be reached, or the store was out for longer than a write waits.
            await self.ledger.checkpoint(release=True)
            return
        await self.ledger.commit()

    async def _give_up(self, todo: list[Request]) -> None:
        """The chunk's runs failed `max_attempts` times, for no request's doing: a fault that
        running it again will not mend. Its remaining requests are failed, once, as
        exhausted attempts fail a request, and the chunk is done."""
        runs = self.chunk.failed_runs
        log.error("chunk %s/%s: its run failed %d times, for no request's doing; failing its "
                  "%d remaining request(s)", self.chunk.batch_id, self.chunk.chunk_no, runs,
                  len(todo))
        message = (f"This request was not completed: the worker failed {runs} times while "
                   "running the part of the batch that holds it, for a reason no request "
                   "caused (see the worker's log), so it was not retried again.")
        for cid, _ in todo:
            self.ledger.add_error_line(results.stop_error_line(
                cid, code="request_failed", message=message))
        await self.ledger.commit()

    async def _autopsy(self, done: set[str]) -> deaths.Strikes | None:
        """Charge a death of the previous run (its in-flight record is still set) to the
        requests it had in flight. None: the chunk is no longer ours."""
        chunk = self.chunk
        strikes = deaths.charge(chunk.strikes, chunk.in_flight, done)
        if chunk.in_flight is None:
            return strikes
        cause = deaths.evidence(chunk.in_flight)
        log.warning("chunk %s/%s: its last worker %s with %d request(s) in flight; they run "
                    "again", chunk.batch_id, chunk.chunk_no,
                    f"crashed ({cause})" if cause else "died without a trace (killed from "
                    "outside?), which is not charged as poison",
                    len(chunk.in_flight.get("ids") or []))
        if not await self.ctx.store.record_deaths(chunk, self.lease, strikes=strikes):
            self.lost = True
            return None
        return strikes

    def _halted(self) -> bool:
        return (self.lost or self.stop_batch is not None or self.stopping.is_set()
                or bool(self.unreachable))

    async def _execute(self, first: list[list[Request]], last: list[list[Request]]) -> None:
        """Suspect groups struck by a crash one at a time (each alone in the worker), then
        the rest in lanes that pull requests in turn (far cheaper than a task per request on
        a chunk of thousands of instant answers; each model's gate bounds what is in flight),
        then the suspects struck only by deaths without a trace, alone. Task groups: if one
        lane fails, the others stop with it rather than run on unwatched."""
        for group in first:
            if not await self._run_alone(group):
                return
        # The first window is recorded before the lanes start: else every lane but one
        # would queue at the reservation's lock for it (hundreds, for an upstream model).
        if (self.todo and not self._halted() and await self._extend_reservation(0)
                and not self._halted()):
            async with asyncio.TaskGroup() as lanes:
                for _ in range(min(len(self.todo), self._lanes)):
                    lanes.create_task(self._lane())
        for group in last:
            if self.crashed or not await self._run_alone(group):
                return

    async def _run_alone(self, group: list[Request]) -> bool:
        """Run one suspect group with nothing else of the worker beside it. False: stop."""
        async with self.gate.alone():
            if self._halted():
                return False
            ids = [cid for cid, _ in group]
            self._alone = len(ids) == 1
            if not await self._reserve(deaths.reservation([], ids, alone=self._alone,
                                                          life=self.ctx.life)):
                return False
            async with asyncio.TaskGroup() as members:
                for request in group:
                    members.create_task(self._guarded(request))
            if self.crashed:
                return False  # charged on release; the next run narrows the suspects
            # Before the door opens: this record must not outlive the group, or a death
            # under another chunk's suspect would be charged to this one's, alone.
            self._alone = False
            return await self._reserve(deaths.reservation([], [], life=self.ctx.life))

    async def _guarded(self, request: Request) -> None:
        guard = self.watchdog.guard()
        try:
            await self._run_one(request, guard, door=False)  # the group holds the door
        finally:
            self.watchdog.release(guard)

    async def _lane(self) -> None:
        guard = self.watchdog.guard()
        try:
            while True:
                # The next request, recorded as in flight before it starts: most are within
                # the recorded window already (no coroutine for them: this runs per request).
                index = self._next
                if (index < self._reserved_upto and index < len(self.todo)
                        and not self._halted()):
                    self._next += 1
                    request: Request | None = self.todo[index]
                else:
                    request = await self._next_request()
                if request is None:
                    break
                await self._run_one(request, guard)
            # None: nothing left, or stopping: the rest stays for the next run
        finally:
            self.watchdog.release(guard)

    async def _next_request(self) -> Request | None:
        """The next request to start, recorded as in flight before it starts."""
        if self._halted() or self._next >= len(self.todo):
            return None
        index = self._next
        self._next += 1
        if index >= self._reserved_upto and not await self._extend_reservation(index):
            return None
        if self._halted():
            return None
        return self.todo[index]

    async def _extend_reservation(self, index: int) -> bool:
        async with self._reserve_lock:
            if index < self._reserved_upto:
                return True  # another lane extended it meanwhile
            now = time.monotonic()
            size = self._window.size
            if self._reserved_at is not None:
                size = self._window.adapt(now - self._reserved_at,
                                          self.ctx.settings.checkpoint_seconds)
            upto = min(len(self.todo), max(self._next, index + size))
            upcoming = [cid for cid, _ in self.todo[index:upto]]
            if not await self._reserve(deaths.reservation(list(self.flying), upcoming,
                                                          life=self.ctx.life)):
                return False
            self._reserved_upto, self._reserved_at = upto, now
            return True

    async def _reserve(self, in_flight: dict[str, Any]) -> bool:
        if await self.ctx.store.reserve_chunk(self.chunk, self.lease, in_flight=in_flight):
            return True
        self._halt(lost=True)
        return False

    def _model_of(self, model: object) -> tuple[str | None, ModelGate | None]:
        """The served model a request's `model` names, and its gate (looked up once a run:
        this runs per request)."""
        if not isinstance(model, str):
            return None, None
        found = self._models.get(model)
        if found is None:
            served = self.ctx.registry.served_id(model)
            gate = self.capacity.gate(served) if served is not None else None
            found = self._models[model] = (served, gate)
        return found

    async def _run_one(self, request: Request, guard: Guard, *, door: bool = True) -> None:
        """Run a request once it holds its model's place and (unless `door` is False: a
        suspect group already holds it) is inside the worker's door. It never waits at the
        door while holding a place."""
        custom_id, body = request
        self.flying[custom_id] = None
        model = body.get("model")
        served, gate = self._model_of(model)
        while True:
            if gate is not None and not gate.try_acquire():
                await gate.acquire()
            if not door or self.gate.is_open:
                break
            if gate is not None:
                gate.release()
            await self.gate.wait_open()
        ctx = self.ctx
        entered = False
        try:
            if door:
                self.gate.enter()
                entered = True
            outcome = await run_request(
                custom_id=custom_id, body=body, operation=self.operation,
                registry=ctx.registry, clock=ctx.clock, guard=guard, retries=self._retries)
        except EngineUnavailable:
            # Not the request's fault: hand the chunk back unharmed and let the model's
            # breaker keep it (and its kind) away until the engine answers again.
            assert served is not None
            del self.flying[custom_id]
            if served not in self.unreachable:
                self.unreachable.add(served)
                self.capacity.unreachable(served)
                if self.key == MIXED:  # or it is claimed again at once
                    self.capacity.unreachable(MIXED)
                if self._body is not None:
                    self._body.cancel()
            return
        except Exception:
            # A bug, not the request's fault as far as we know: never silent, never a loop
            # without end. It stays in flight, and the run ends as if it had died under it.
            log.exception("batch %s: running request %r raised", self.chunk.batch_id,
                          custom_id)
            self.crashed.append(custom_id)
            return
        finally:
            if entered:
                self.gate.leave()
            if gate is not None:
                gate.release()
        del self.flying[custom_id]
        if served is not None and outcome.ok:
            self.capacity.reachable(served)
        self.ledger.add(outcome, served)
        self.tally.add(served or (model if isinstance(model, str) else None), ok=outcome.ok,
                       prompt=outcome.input_tokens, cached=outcome.cached_tokens,
                       completion=outcome.output_tokens)
        self.finished.add(custom_id)
        if (self.ledger.unsaved >= self._save_after
                and self._next < len(self.todo)):  # else the commit saves them: no extra part
            self.ledger.save_soon()

    def _halt(self, *, lost: bool = False, batch: BatchRecord | None = None) -> None:
        """Stop calling the engine at once: the chunk is no longer ours, or its batch stops."""
        if lost:
            self.lost = True
        if batch is not None:
            self.stop_batch = batch
        if self._body is not None:
            self._body.cancel()

    async def _keep_saving(self) -> None:
        await self.ledger.keep_saving()
        self._halt(lost=True)  # a checkpoint was refused: the chunk is no longer ours

    async def _heartbeat(self) -> None:
        settings = self.ctx.settings
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            self.tally.flush()
            try:
                batch = await self._beat()
            except Exception as exc:  # the store, for a moment: the lease outlasts a few beats
                log.warning("chunk %s/%s: heartbeat failed (%s); trying again",
                            self.chunk.batch_id, self.chunk.chunk_no,
                            outage(exc) or "error", exc_info=outage(exc) is None)
                continue
            now = self.ctx.clock.now()
            if batch is None:
                self._halt(lost=True)  # zero rows: the chunk is no longer ours
                return
            if batch.stop_reason is None and batch.expires_at > now:
                continue
            if batch.stop_reason is None:
                await self.ctx.store.mark_expired(now=int(now))
                batch = await self.ctx.store.get_batch(batch.id, owner=None)
            self._halt(lost=batch is None, batch=batch)
            return

    async def _beat(self) -> BatchRecord | None:
        return await self.ctx.store.heartbeat_chunk(
            self.chunk, self.lease, progress=self.ledger.live, now=self.ctx.clock.now(),
            lease_seconds=self.ctx.settings.lease_seconds)

    async def _input_lost(self, message: str) -> None:
        log.error("batch %s cannot read its input: %s", self.chunk.batch_id, message)
        await self.ctx.store.stop_batch(self.chunk.batch_id, reason=StopReason.FAILED, errors=[
            {"code": "input_file_missing", "line": None, "param": "input_file_id",
             "message": "The batch's input file can no longer be read; requests that had not "
                        "run are reported as batch_failed."}])
        await self.ctx.store.checkpoint_chunk(
            self.chunk, self.lease, parts=self.ledger.parts, committed=self.ledger.committed,
            release=True, now=self.ctx.clock.now(), lease_seconds=0)


def _outage_of(failure: BaseException) -> str | None:
    """Why the store could not be reached, if that is all `failure` is: the lanes' task
    group wraps what they raise, and a failure is an outage only if each part of it is."""
    if isinstance(failure, BaseExceptionGroup):
        reasons = [_outage_of(exc) for exc in failure.exceptions]
        return reasons[0] if all(reasons) else None
    return outage(failure)
