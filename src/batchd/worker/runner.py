"""The worker: claims chunks and batch tasks from the store and runs them.

It runs inside `batchd serve` by default, or alone as `batchd worker`; several workers can
share one store, because every piece of work is held under a lease with a fencing generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from batchd import metrics
from batchd.backends import outage
from batchd.files import FileService
from batchd.store.records import BatchRecord, BatchStatus, Chunk, Lease
from batchd.uploads import UploadService
from batchd.webhooks.sender import WebhookSender
from batchd.worker.batch_assembly import assemble
from batchd.worker.batch_validation import validate
from batchd.worker.capacity import MIXED, Capacity
from batchd.worker.chunks import ChunkRun, StartWindow
from batchd.worker.context import WorkerContext
from batchd.worker.gate import RequestGate
from batchd.worker.inputs import input_key_of

log = logging.getLogger(__name__)


class WorkerFailed(Exception):
    """One of the worker's loops died, so the worker stopped: the process does no batch work
    any more and should be restarted. The loop's exception is the cause."""


class Worker:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._stopping = asyncio.Event()
        self._gate = RequestGate()
        self.capacity = Capacity(ctx.registry, cap=ctx.settings.worker_concurrency,
                                 chunks=ctx.settings.worker_chunks,
                                 chunk_lines=ctx.settings.chunk_lines,
                                 on_idle=lambda: self.wake("chunk"))
        self._windows: dict[str, StartWindow] = {}  # per model key (see ChunkRun)
        # Each batch's input blob, looked up once (its file's key never changes).
        self._input_keys: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._chunk_runs: set[asyncio.Task[bool]] = set()
        self._wakes: list[tuple[str, asyncio.Event]] = []  # one per loop (see _poll)
        self._on_failure: Callable[[WorkerFailed], None] | None = None
        self.failed: WorkerFailed | None = None  # set when a dying loop stopped the worker
        self._outage: str | None = None  # why the store is unreachable, while it is
        self._outage_wait = 0.0
        self._outage_seen = 0.0  # when a step last met the outage (monotonic)
        self.files = FileService(store=ctx.store, blobs=ctx.blobs, clock=ctx.clock,
                                 settings=ctx.settings)
        self.webhooks = WebhookSender(store=ctx.store, clock=ctx.clock, settings=ctx.settings)
        self.uploads = UploadService(store=ctx.store, blobs=ctx.blobs, clock=ctx.clock,
                                     settings=ctx.settings, files=self.files)

    def start(self, *, on_failure: Callable[[WorkerFailed], None] | None = None) -> None:
        """Start the loops as named tasks; `stop()` ends them. If one dies, the worker stops
        (see `_on_loop_exit`) and `on_failure` is told, so that the process can end."""
        self._on_failure = on_failure
        loops = [("batch-tasks", self._poll("batch task", self.run_one_batch_task)),
                 ("housekeeping", self._housekeeping()),
                 ("chunks", self._claim_chunks()),
                 # Its own loop: a slow receiver never holds up batch work.
                 ("webhooks", self._deliver_webhooks())]
        if self.ctx.store.postgres:  # other hosts' new work wakes this worker at once
            loops.append(("listen", self.ctx.store.listen_for_work(self.wake,
                                                                   self._stopping)))
        self._tasks = [asyncio.create_task(coro, name=f"worker:{name}") for name, coro in loops]
        metrics.WORKER_STARTS.inc()
        metrics.CALLBACKS.busy = self.capacity.busy
        for task in self._tasks:
            task.add_done_callback(self._on_loop_exit)

    def wake(self, *loops: str) -> None:
        """New work may be there (a batch was created): poll now instead of after a sleep;
        `loops` names the loops to wake (`_poll`'s `what`), all of them by default."""
        for what, event in self._wakes:
            if not loops or what in loops:
                event.set()

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        """A loop that dies (each step's failure is caught in `_guarded`, so this is a fault
        in the loop itself) would leave a worker that looks alive and does part of its work,
        or none: stop it all instead, as procrastinate stops a worker whose side task
        failed, and say so, so that /healthz fails and the process exits to be restarted."""
        if task.cancelled() or task.exception() is None or self._stopping.is_set():
            return
        loop, exc = task.get_name().removeprefix("worker:"), task.exception()
        self.failed = WorkerFailed(f"the worker stopped: its {loop} loop failed: {exc!r}")
        self.failed.__cause__ = exc
        log.error("worker loop %s failed; stopping the worker", loop, exc_info=exc)
        self._stopping.set()  # the other loops end; running chunks hand their rest back
        self.wake()
        if self._on_failure is not None:
            self._on_failure(self.failed)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming; give running work `grace_seconds` to finish, then cancel it (its
        leases lapse and another start picks it up again)."""
        self._stopping.set()
        self.wake()
        if metrics.CALLBACKS.busy == self.capacity.busy:  # a stopped worker has no slots
            metrics.CALLBACKS.busy = None
        if not self._tasks:
            await self.webhooks.aclose()
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.webhooks.aclose()

    async def _claim_chunks(self) -> None:
        """Claim chunks while a model has room for one (worker/capacity.py); each runs as its
        own task. On stop, wait for them (they stop starting requests and hand back the
        rest); cancelled (out of grace), cancel them."""
        try:
            await self._poll("chunk", self._claim_and_start)
            while self._chunk_runs:
                await asyncio.wait(set(self._chunk_runs))
        except asyncio.CancelledError:
            for task in self._chunk_runs:
                task.cancel()
            await asyncio.gather(*self._chunk_runs, return_exceptions=True)
            raise

    async def _claim_and_start(self) -> bool:
        claim = await self._claim()
        if claim is None:
            return False
        chunk = claim[0]
        # Its own task, so a failure is logged here or nowhere (the lease then lapses and
        # the chunk is claimed again).
        task = asyncio.create_task(self._guarded("chunk run", self._run_chunk(*claim)),
                                   name=f"worker:chunk:{chunk.batch_id}/{chunk.chunk_no}")
        self._chunk_runs.add(task)
        task.add_done_callback(self._chunk_runs.discard)
        return True

    async def _claim(self, *, any_model: bool = False,
                     ) -> tuple[Chunk, Lease, str, BatchRecord | None] | None:
        """Claim a chunk of a model with room (`any_model`: of any model), counted against
        that model until its run ends."""
        ctx = self.ctx
        room, crowded = self.capacity.claimable()
        if not any_model and not room and not crowded:
            return None
        names = self.capacity.names.__getitem__
        claim = await ctx.store.claim_chunk(
            worker=ctx.worker_id, now=ctx.clock.now(), lease_seconds=ctx.settings.lease_seconds,
            models=None if any_model else [n for m in room for n in names(m)],
            mixed=MIXED in room, newcomers=[n for m in crowded for n in names(m)],
            served=ctx.registry.names())
        if claim is None:
            return None
        chunk, lease = claim
        if chunk.generation > 1:
            metrics.CHUNKS_RECLAIMED.inc()
        if chunk.in_flight:
            metrics.CRASH_RECOVERIES.inc()
        metrics.RUNNING_CHUNKS.inc()
        batch = await ctx.store.get_batch(chunk.batch_id, owner=None)
        served = ctx.registry.served_id(batch.model) if batch and batch.model else None
        key = served or MIXED
        slots = self.capacity.models[key]
        slots.chunks += 1
        slots.gate.rearm()  # its requests may leave room again: claim again when they do
        return chunk, lease, key, batch

    async def _run_chunk(self, chunk: Chunk, lease: Lease, key: str,
                         batch: BatchRecord | None) -> None:
        """`batch`: the chunk's, as read when it was claimed."""
        ctx = self.ctx
        try:
            assert batch is not None
            input_key = self._input_keys.get(batch.id)
            if input_key is None:
                if len(self._input_keys) >= 4096:
                    self._input_keys.clear()
                input_key = self._input_keys[batch.id] = await input_key_of(ctx, batch)
            lanes = self.capacity.lanes(key)
            window = self._windows.setdefault(key, StartWindow(lanes))
            await ChunkRun(ctx, chunk, lease, gate=self._gate, capacity=self.capacity,
                           lanes=lanes, stopping=self._stopping, window=window,
                           key=key, endpoint=batch.endpoint).run(input_key)
        finally:
            self.capacity.models[key].chunks -= 1
            metrics.RUNNING_CHUNKS.dec()
            # Room for another chunk; the batch may be ready to assemble. Not the webhook
            # loop: an ended batch's events come from its assembly, which wakes everyone.
            self.wake("chunk", "batch task")

    async def _deliver_webhooks(self) -> None:
        """Deliveries run as tasks of their own (webhooks/sender.py); on stop, those in
        flight get the grace to finish (cancelled past it, they are sent again later)."""
        await self._poll("webhook delivery", self.webhooks.step)
        await self.webhooks.settle()

    async def _poll(self, what: str, step: Callable[[], Awaitable[bool]], *,
                    polls: bool = True) -> None:
        """Run `step` while it finds work; when it finds none, sleep until woken or (if it
        `polls`) for a poll interval: other processes' work is only seen by polling.

        The interval starts at `poll_seconds` and doubles with each poll that finds nothing,
        up to `idle_poll_cap`; work found, a wake-up or a store outage (which has its own
        growing waits) starts it again from `poll_seconds`.
        This process's own new work wakes the loops at once (and, on PostgreSQL, so does
        other hosts'), so an idle worker asks the store a few times a minute rather than a
        few times a second: each look is a query, and an idle server polling twice a second
        spent about 14 ms of CPU a second, 5 ms backing off (bench/upstream.py's `polls`).

        Each loop has its own wake-up flag, cleared before it looks for work: with one flag
        shared by all loops, a loop that woke and cleared it could swallow the wake-up meant
        for another that was busy at that moment, which then slept a whole poll interval."""
        wake = asyncio.Event()
        self._wakes.append((what, wake))
        settings = self.ctx.settings
        interval = settings.poll_seconds
        while not self._stopping.is_set():
            wake.clear()
            if await self._guarded(what, step()):
                interval = settings.poll_seconds
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval if polls else None):
                    await wake.wait()
            # Not idle but cut off: an outage keeps its own waits (`_guarded`), as before.
            interval = (settings.poll_seconds if wake.is_set() or self._outage is not None
                        else min(2 * interval, settings.idle_poll_cap))

    async def _guarded(self, what: str, step: Awaitable[object]) -> bool:
        """Run one step; a failure is logged and the loop goes on. While the database or the
        object store is unreachable the worker pauses (one log line per outage, waits
        growing to 5 s) and resumes by itself when it is back."""
        try:
            done = bool(await step)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = outage(exc)
            if reason is None:
                log.exception("worker step failed: %s", what)
                await asyncio.sleep(self.ctx.settings.poll_seconds)
                return False
            if self._outage is None:
                log.warning("worker paused: %s", reason)
            self._outage, self._outage_seen = reason, time.monotonic()
            self._outage_wait = min(max(self._outage_wait * 2, self.ctx.settings.poll_seconds),
                                    5.0)
            await asyncio.sleep(self._outage_wait)
            return False
        # Over once every step has worked for a while (one store may be back, the other not).
        if self._outage is not None and time.monotonic() - self._outage_seen > 10:
            log.warning("worker resumed: the store is reachable again")
            self._outage, self._outage_wait = None, 0.0
        return done

    async def _housekeeping(self) -> None:
        """Expiry and file purges, every ten poll intervals (5 s by default; running
        chunks also notice their batch's expiry on each heartbeat). However many workers
        share the store, one of them takes each period's turn."""
        period = max(1.0, 10 * self.ctx.settings.poll_seconds)
        while not self._stopping.is_set():
            if await self._guarded("housekeeping turn", self._my_turn(period)):
                if await self._guarded("expiry", self._expire()):
                    self.wake()
                await self._guarded("purge", self.files.purge_deleted())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._stopping.wait()

    async def _my_turn(self, period: float) -> bool:
        # A little under the period, so the turn is due again when this worker looks next.
        return await self.ctx.store.take_turn("expiry", now=self.ctx.clock.now(),
                                              every=period * 0.9)

    async def _expire(self) -> int:
        ctx = self.ctx
        expired = await ctx.store.mark_expired(now=int(ctx.clock.now()))
        await ctx.store.expire_files(now=int(ctx.clock.now()))
        await self.uploads.expire()  # an hour old and not completed: parts removed
        return expired

    async def run_one_chunk(self) -> bool:
        """Claim one chunk of any model and run it to its end (tests, one-shot runs)."""
        claim = await self._claim(any_model=True)
        if claim is None:
            return False
        await self._run_chunk(*claim)
        return True

    async def run_one_batch_task(self) -> bool:
        ctx = self.ctx
        claim = await ctx.store.claim_batch_task(worker=ctx.worker_id, now=ctx.clock.now(),
                                                 lease_seconds=ctx.settings.lease_seconds)
        if claim is None:
            return False
        batch, lease = claim
        if batch.status is BatchStatus.VALIDATING and batch.stop_reason is None:
            await validate(ctx, batch, lease)
        else:  # it ended (its chunks are done, or it stopped): put its result files together
            await assemble(ctx, batch, lease)
        self.wake()
        return True

    async def drain(self, *, max_steps: int = 10_000) -> None:
        """Run work until none is left (tests, one-shot runs)."""
        for _ in range(max_steps):
            await self._expire()
            await self.files.purge_deleted()
            progressed = await self.run_one_batch_task()
            progressed = await self.run_one_chunk() or progressed
            progressed = await self.webhooks.step() or progressed
            if not progressed:
                return
