"""Where a chunk run's results go: saved once, never lost, never reported twice.

Results reach durable storage as *parts*: write-once blobs, fsync'd, then recorded on the chunk
row by a fenced update. A checkpoint every `checkpoint_seconds`, or once `checkpoint_results`
are waiting (and at shutdown), bounds what a crash can lose; a resumed chunk reads its
committed parts and skips the requests they hold, so no `custom_id` is ever run (or reported)
twice. A part's key holds the lease's generation: a worker that lost its lease never
overwrites the parts of the one that took it over, and its own are never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchd.backends import outage
from batchd.shielding import finish_even_if_cancelled
from batchd.store.records import Chunk, ChunkProgress, ChunkState, Lease, Part
from batchd.worker.context import WorkerContext
from batchd.worker.requests import Outcome

log = logging.getLogger(__name__)


def part_key(chunk: Chunk, generation: int, seq: int, kind: str) -> str:
    # Generation and sequence are in the key: a fenced-out worker never overwrites a part.
    return (f"batches/{chunk.batch_id}/parts/"
            f"{chunk.chunk_no:07d}-g{generation}-{seq:04d}.{kind}.jsonl")


def done_custom_ids(ctx: WorkerContext, parts: list[Part]) -> set[str]:
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
    # By model: [requests answered, input, cached, output tokens] (a part's `usage`).
    usage: dict[str, list[int]] = field(default_factory=dict)

    def add(self, outcome: Outcome, model: str | None) -> None:
        (self.ok if outcome.ok else self.err).append(outcome.line)
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens
        self.cached_tokens += outcome.cached_tokens
        if model is not None and (outcome.ok or outcome.input_tokens or outcome.output_tokens):
            counts = self.usage.get(model)
            if counts is None:
                counts = self.usage[model] = [0, 0, 0, 0]
            counts[0] += outcome.ok
            counts[1] += outcome.input_tokens
            counts[2] += outcome.cached_tokens
            counts[3] += outcome.output_tokens

    def add_error_line(self, line: bytes) -> None:
        self.err.append(line)

    @property
    def pending(self) -> ChunkProgress:
        return ChunkProgress(n_ok=len(self.ok), n_err=len(self.err),
                             input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                             cached_tokens=self.cached_tokens)

    def take(self) -> tuple[list[bytes], list[bytes], ChunkProgress, dict[str, list[int]]]:
        """Hand over the unsaved lines (and what they count) and start afresh."""
        taken = self.ok, self.err, self.pending, self.usage
        self.ok, self.err, self.usage = [], [], {}
        self.input_tokens = self.output_tokens = self.cached_tokens = 0
        return taken

    def put_back(self, ok: list[bytes], err: list[bytes], pending: ChunkProgress,
                 usage: dict[str, list[int]]) -> None:
        """Lines that could not be saved go back in front, for a later flush."""
        self.ok, self.err = ok + self.ok, err + self.err
        self.input_tokens += pending.input_tokens
        self.output_tokens += pending.output_tokens
        self.cached_tokens += pending.cached_tokens
        for model, counts in usage.items():
            mine = self.usage.setdefault(model, [0, 0, 0, 0])
            for n, value in enumerate(counts):
                mine[n] += value

    @property
    def live(self) -> ChunkProgress:
        return self.committed + self.pending


class PartLedger:
    """One run's results on their way to the chunk row: the lines not yet saved, the parts
    already recorded, and the fenced writes (checkpoint, commit) that move the first into
    the second. Every write of the row goes through here, under one lock, so a checkpoint and
    the final commit never race to record different lists of parts."""

    def __init__(self, ctx: WorkerContext, chunk: Chunk, lease: Lease) -> None:
        self.ctx = ctx
        self.chunk = chunk
        self.lease = lease
        self.results = _Results(committed=chunk.committed)
        self.parts = list(chunk.parts)
        self._lock = asyncio.Lock()
        self._save_wanted = asyncio.Event()
        self._part_seq = 0

    def add(self, outcome: Outcome, model: str | None) -> None:
        """A finished request; `model`: the served model that answered (its usage is
        recorded under it), None if none did."""
        self.results.add(outcome, model)

    def add_error_line(self, line: bytes) -> None:
        self.results.add_error_line(line)

    @property
    def unsaved(self) -> int:
        """Finished lines that no part holds yet."""
        return len(self.results.ok) + len(self.results.err)

    @property
    def committed(self) -> ChunkProgress:
        return self.results.committed

    @property
    def live(self) -> ChunkProgress:
        """Committed totals plus what waits to be saved: the counts a heartbeat publishes."""
        return self.results.live

    def save_soon(self) -> None:
        """Ask `keep_saving` for a checkpoint now rather than at the end of its interval."""
        self._save_wanted.set()

    async def keep_saving(self) -> None:
        """Save finished results every `checkpoint_seconds`, or sooner once asked
        (`save_soon`): a short run keeps what it finished. Returns once a checkpoint is
        refused: the chunk is no longer this run's."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ctx.settings.checkpoint_seconds):
                    await self._save_wanted.wait()
            self._save_wanted.clear()
            if self.unsaved:
                # Shielded: if the chunk finishes meanwhile and this task is cancelled, the
                # checkpoint still completes, so its part is not lost between two flushes.
                try:
                    saved = await finish_even_if_cancelled(self.checkpoint(release=False))
                except Exception as exc:  # the store, for a moment: the lines wait
                    log.warning("chunk %s/%s: checkpoint failed (%s); trying again",
                                self.chunk.batch_id, self.chunk.chunk_no,
                                outage(exc) or "error", exc_info=outage(exc) is None)
                    continue
                if not saved:
                    return

    async def checkpoint(self, *, release: bool, crashed: dict[str, Any] | None = None,
                         failed: bool = False) -> bool:
        """Save the unsaved lines as a part and record it (fenced); with `release`, hand the
        rest of the chunk back (see the store's `checkpoint_chunk`). False: refused, the
        chunk is no longer this run's."""
        async with self._lock:
            part, totals = await self._write_part()
            # The part is on disk: from now on every later flush must name it, whatever
            # happens to this update.
            self.parts = self.parts + ([part] if part else [])
            self.results.committed = totals
            return await self._through_outage(lambda: self.ctx.store.checkpoint_chunk(
                self.chunk, self.lease, parts=self.parts, committed=totals, release=release,
                crashed=crashed, failed=failed, now=self.ctx.clock.now(),
                lease_seconds=self.ctx.settings.lease_seconds), parts=self.parts)

    async def commit(self) -> None:
        """Save the last lines and mark the chunk done (fenced). Refused, the part written
        for it is deleted: the run that holds the chunk now reports those requests."""
        async with self._lock:
            part, totals = await self._write_part()
            parts = self.parts + ([part] if part else [])
            committed = await self._through_outage(lambda: self.ctx.store.commit_chunk(
                self.chunk, self.lease, parts=parts, committed=totals,
                now=self.ctx.clock.now()), parts=parts, done=True)
            if not committed:
                await self._drop(part)

    async def _write_part(self) -> tuple[Part | None, ChunkProgress]:
        """Write the unsaved lines as a part; returns it and the totals it brings."""
        res = self.results
        if not res.ok and not res.err:
            return None, res.committed
        ok, err, pending, usage = res.take()
        self._part_seq += 1
        # `usage` is recorded by the fenced write that first names the part on the chunk row
        # (store: record_part_usage): counted once, and never if the part is refused.
        part: Part = {"ok": None, "err": None, "n_ok": len(ok), "n_err": len(err),
                      "b_ok": sum(map(len, ok)), "usage": usage}
        try:
            for kind, lines in (("ok", ok), ("err", err)):
                if lines:
                    key = part_key(self.chunk, self.lease.generation, self._part_seq, kind)
                    await asyncio.to_thread(_write_lines, self.ctx, key, lines)
                    part[kind] = key
        except BaseException:
            # Not saved: put the lines back so a later flush (or the final commit) has them.
            res.put_back(ok, err, pending, usage)
            raise
        return part, res.committed + pending

    async def _through_outage(self, write: Callable[[], Awaitable[bool]], *,
                              parts: list[Part], done: bool = False) -> bool:
        """A fenced write of `parts`, tried again while the store is unreachable and the
        lease may still be ours (once it has lapsed, the fence refuses the write anyway, and
        another worker runs the chunk from its last checkpoint).

        A connection lost after the server committed looks like a failure: when a retry is
        refused, the row tells whether the earlier attempt landed (this generation's parts
        are there), so results that landed are never dropped as if refused."""
        deadline = time.monotonic() + self.ctx.settings.lease_seconds
        wait, retried = 0.1, False
        while True:
            try:
                written = await write()
            except Exception as exc:
                if outage(exc) is None or time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
                wait, retried = min(wait * 2, 2.0), True
                continue
            if written or not retried:
                return written
            row = await self.ctx.store.get_chunk(self.chunk.batch_id, self.chunk.chunk_no)
            return (row is not None and row.generation == self.lease.generation
                    and row.parts == parts and (row.state is ChunkState.DONE or not done))

    async def _drop(self, part: Part | None) -> None:
        for kind in ("ok", "err"):
            key = (part or {}).get(kind)
            if key:
                await asyncio.to_thread(self.ctx.blobs.delete, key)


def _write_lines(ctx: WorkerContext, key: str, lines: list[bytes]) -> None:
    with ctx.blobs.writer(key) as out:
        out.writelines(lines)
