"""Executing one leased chunk: run its requests, heartbeat, checkpoint, commit fenced.

Results reach durable storage as *parts*: write-once blobs, fsync'd, then recorded on the chunk
row by a fenced update. A checkpoint every `checkpoint_seconds` (and at shutdown) bounds what a
crash can lose; a resumed chunk reads its committed parts and skips the requests they hold, so
no `custom_id` is ever run (or reported) twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchd.batches import results
from batchd.store.blobs import BlobMissing
from batchd.store.records import BatchRecord, Chunk, ChunkProgress, Lease, StopReason
from batchd.worker.context import WorkerContext
from batchd.worker.requests import Outcome, run_request
from batchd.worker.watchdog import Watchdog

log = logging.getLogger(__name__)

Request = tuple[str, dict[str, Any]]


def part_key(chunk: Chunk, generation: int, seq: int, kind: str) -> str:
    # Generation and sequence are in the key: a fenced-out worker never overwrites a part.
    return (f"batches/{chunk.batch_id}/parts/"
            f"{chunk.chunk_no:07d}-g{generation}-{seq:04d}.{kind}.jsonl")


def chunk_requests(ctx: WorkerContext, input_key: str, chunk: Chunk) -> Iterator[Request]:
    """(custom_id, body) of each request line in the chunk (validated earlier)."""
    for raw in ctx.blobs.lines(input_key, chunk.byte_start, chunk.byte_end):
        if raw.strip():
            item = orjson.loads(raw)
            yield item["custom_id"], item["body"]


def read_requests(ctx: WorkerContext, input_key: str, chunk: Chunk) -> list[Request]:
    return list(chunk_requests(ctx, input_key, chunk))


def prefix_key(request: Request) -> tuple[str, str]:
    """(model, first message text): what decides whether two prompts share a prefix."""
    body = request[1]
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    content = first.get("content") if isinstance(first, dict) else None
    return str(body.get("model")), content if isinstance(content, str) else ""


def done_custom_ids(ctx: WorkerContext, parts: list[dict[str, str | None]]) -> set[str]:
    """The requests that committed parts already answer."""
    done: set[str] = set()
    for part in parts:
        for key in (part.get("ok"), part.get("err")):
            if key:
                done.update(orjson.loads(line)["custom_id"] for line in ctx.blobs.lines(key))
    return done


@dataclass
class _Results:
    """Finished lines not yet checkpointed, and totals including committed ones.

    Plain counters, not a ChunkProgress per request: this runs once for every request."""

    committed: ChunkProgress
    ok: list[bytes] = field(default_factory=list)
    err: list[bytes] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def add(self, outcome: Outcome) -> None:
        (self.ok if outcome.ok else self.err).append(outcome.line)
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        self.cached_tokens += outcome.cached_tokens

    def add_error_line(self, line: bytes) -> None:
        self.err.append(line)

    @property
    def pending(self) -> ChunkProgress:
        return ChunkProgress(n_ok=len(self.ok), n_err=len(self.err),
                             input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                             cached_tokens=self.cached_tokens)

    def take(self) -> tuple[list[bytes], list[bytes], ChunkProgress]:
        """Hand over the unsaved lines (and what they count) and start afresh."""
        taken = self.ok, self.err, self.pending
        self.ok, self.err = [], []
        self.input_tokens = self.output_tokens = self.cached_tokens = 0
        return taken

    def put_back(self, ok: list[bytes], err: list[bytes], pending: ChunkProgress) -> None:
        """Lines that could not be saved go back in front, for a later flush."""
        self.ok, self.err = ok + self.ok, err + self.err
        self.input_tokens += pending.input_tokens
        self.output_tokens += pending.output_tokens
        self.cached_tokens += pending.cached_tokens

    @property
    def live(self) -> ChunkProgress:
        return self.committed + self.pending


class ChunkRun:
    """One attempt at one chunk, under one lease."""

    def __init__(self, ctx: WorkerContext, chunk: Chunk, lease: Lease,
                 requests_gate: asyncio.Semaphore, stopping: asyncio.Event) -> None:
        self.ctx = ctx
        self.chunk = chunk
        self.lease = lease
        self.gate = requests_gate
        self.stopping = stopping
        self.results = _Results(committed=chunk.committed)
        self.parts = list(chunk.parts)
        self.lost = False
        self.stop_batch: BatchRecord | None = None
        self._flush_lock = asyncio.Lock()
        self._part_seq = 0
        self.watchdog = Watchdog(ctx.settings.request_timeout_seconds)

    async def run(self, input_key: str) -> None:
        try:
            requests = await asyncio.to_thread(read_requests, self.ctx, input_key, self.chunk)
            done = await asyncio.to_thread(done_custom_ids, self.ctx, self.parts)
        except BlobMissing as exc:
            await self._input_lost(str(exc))
            return
        # Requests that share a model and a leading prompt go to the engine together, so its
        # prefix cache serves them one after another instead of thrashing between prompts.
        todo = sorted((r for r in requests if r[0] not in done), key=prefix_key)
        finished = [False] * len(todo)
        # A few lanes pull requests in turn (the worker-wide gate bounds what is in flight):
        # far cheaper than a task per request on a chunk of thousands of instant answers.
        queue = iter(enumerate(todo))
        lanes = min(len(todo), self.ctx.settings.worker_concurrency)
        tasks = [asyncio.create_task(self._lane(queue, finished), name=f"lane-{n}")
                 for n in range(lanes)]
        beat = asyncio.create_task(self._heartbeat(tasks), name="chunk-heartbeat")
        dog = asyncio.create_task(self.watchdog.run(), name="chunk-watchdog")
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: keep what finished, hand the rest back.
            for task in tasks:
                task.cancel()
            await asyncio.shield(self._checkpoint(release=True))
            raise
        finally:
            for helper in (beat, dog):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        if self.lost:
            log.warning("lost the lease on chunk %s/%s; its unsaved results are dropped",
                        self.chunk.batch_id, self.chunk.chunk_no)
            return
        stop = self.stop_batch.stop_reason if self.stop_batch else None
        if stop is not None:
            code = stop.error_code
            for (cid, _), was_finished in zip(todo, finished, strict=True):
                if not was_finished:
                    self.results.add_error_line(results.stop_error_line(
                        cid, code=code, message=results.STOP_MESSAGES[code]))
        elif not all(finished):  # shutting down: not all requests were started
            await self._checkpoint(release=True)
            return
        await self._commit()

    async def _lane(self, queue: Iterator[tuple[int, Request]], finished: list[bool]) -> None:
        ctx = self.ctx
        retries = ctx.settings.request_retries
        guard = self.watchdog.guard()
        try:
            for index, (custom_id, body) in queue:
                async with self.gate:
                    if self.stopping.is_set() or self.stop_batch is not None:
                        return  # not started: it stays for whoever runs this chunk next
                    outcome = await run_request(
                        custom_id=custom_id, body=body, registry=ctx.registry,
                        clock=ctx.clock, guard=guard, retries=retries,
                    )
                self.results.add(outcome)
                finished[index] = True
        finally:
            self.watchdog.release(guard)

    async def _heartbeat(self, tasks: list[asyncio.Task[None]]) -> None:
        settings = self.ctx.settings
        last_checkpoint = time.monotonic()
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            if time.monotonic() - last_checkpoint >= settings.checkpoint_seconds:
                last_checkpoint = time.monotonic()
                # Shielded: if the chunk finishes meanwhile and this task is cancelled, the
                # checkpoint still completes, so its part is not lost between the two flushes.
                if not await asyncio.shield(self._checkpoint(release=False)):
                    batch = None
                else:
                    batch = await self._beat()
            else:
                batch = await self._beat()
            now = self.ctx.clock.now()
            stopping = batch is not None and (batch.stop_reason is not None
                                              or batch.expires_at <= now)
            if batch is None or stopping:
                # Zero rows: the chunk is no longer ours, so stop calling the engine at once.
                self.lost = batch is None
                if batch is not None and batch.stop_reason is None:
                    await self.ctx.store.mark_expired(now=int(now))
                    batch = await self.ctx.store.get_batch(batch.id, owner=None)
                self.stop_batch = batch
                for task in tasks:
                    task.cancel()
                return

    async def _beat(self) -> BatchRecord | None:
        return await self.ctx.store.heartbeat_chunk(
            self.chunk, self.lease, progress=self.results.live, now=self.ctx.clock.now(),
            lease_seconds=self.ctx.settings.lease_seconds)

    async def _write_part(self) -> tuple[dict[str, str | None] | None, ChunkProgress]:
        """Write the unsaved lines as a part; returns it and the totals it brings."""
        res = self.results
        if not res.ok and not res.err:
            return None, res.committed
        ok, err, pending = res.take()
        self._part_seq += 1
        part: dict[str, str | None] = {"ok": None, "err": None}
        try:
            for kind, lines in (("ok", ok), ("err", err)):
                if lines:
                    key = part_key(self.chunk, self.lease.generation, self._part_seq, kind)
                    await asyncio.to_thread(_write_lines, self.ctx, key, lines)
                    part[kind] = key
        except BaseException:
            # Not saved: put the lines back so a later flush (or the final commit) has them.
            res.put_back(ok, err, pending)
            raise
        return part, res.committed + pending

    async def _checkpoint(self, *, release: bool) -> bool:
        async with self._flush_lock:
            part, totals = await self._write_part()
            # The part is on disk: from now on every later flush must name it, whatever
            # happens to this update.
            self.parts = self.parts + ([part] if part else [])
            self.results.committed = totals
            saved = await self.ctx.store.checkpoint_chunk(
                self.chunk, self.lease, parts=self.parts, committed=totals, release=release,
                now=self.ctx.clock.now(), lease_seconds=self.ctx.settings.lease_seconds)
            if not saved:
                self.lost = True
            return saved

    async def _commit(self) -> None:
        async with self._flush_lock:
            part, totals = await self._write_part()
            parts = self.parts + ([part] if part else [])
            committed = await self.ctx.store.commit_chunk(
                self.chunk, self.lease, parts=parts, committed=totals,
                now=int(self.ctx.clock.now()))
            if not committed:
                self._drop(part)

    def _drop(self, part: dict[str, str | None] | None) -> None:
        for key in (part or {}).values():
            if key:
                self.ctx.blobs.delete(key)

    async def _input_lost(self, message: str) -> None:
        log.error("batch %s cannot read its input: %s", self.chunk.batch_id, message)
        await self.ctx.store.stop_batch(self.chunk.batch_id, reason=StopReason.FAILED, errors=[
            {"code": "input_file_missing", "line": None, "param": "input_file_id",
             "message": "The batch's input file can no longer be read; requests that had not "
                        "run are reported as batch_failed."}])
        await self.ctx.store.checkpoint_chunk(
            self.chunk, self.lease, parts=self.parts, committed=self.results.committed,
            release=True, now=self.ctx.clock.now(), lease_seconds=0)


def _write_lines(ctx: WorkerContext, key: str, lines: list[bytes]) -> None:
    with ctx.blobs.writer(key) as out:
        out.writelines(lines)
