"""Executing one leased chunk: run its requests, heartbeat, write its parts, commit fenced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import orjson

from batchd.batches import results
from batchd.store.records import BatchRecord, Chunk, ChunkProgress, Lease
from batchd.worker.context import WorkerContext
from batchd.worker.requests import Outcome, run_request

log = logging.getLogger(__name__)


def part_key(batch_id: str, chunk_no: int, generation: int, kind: str) -> str:
    # The generation is in the key, so a fenced-out worker never overwrites a committed part.
    return f"batches/{batch_id}/parts/{chunk_no:07d}-g{generation}.{kind}.jsonl"


def read_requests(ctx: WorkerContext, input_key: str, chunk: Chunk) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """(custom_id, body) of each request line in the chunk (validated earlier)."""
    out = []
    for raw in ctx.blobs.lines(input_key, chunk.byte_start, chunk.byte_end):
        if raw.strip():
            item = orjson.loads(raw)
            out.append((item["custom_id"], item["body"]))
    return out


@dataclass
class _Tally:
    ok: list[bytes] = field(default_factory=list)
    err: list[bytes] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, outcome: Outcome) -> None:
        (self.ok if outcome.ok else self.err).append(outcome.line)
        self.input_tokens += outcome.input_tokens
        self.output_tokens += outcome.output_tokens

    def progress(self) -> ChunkProgress:
        return ChunkProgress(n_ok=len(self.ok), n_err=len(self.err),
                             input_tokens=self.input_tokens, output_tokens=self.output_tokens)


class ChunkRun:
    """One attempt at one chunk, under one lease."""

    def __init__(self, ctx: WorkerContext, chunk: Chunk, lease: Lease,
                 requests_gate: asyncio.Semaphore) -> None:
        self.ctx = ctx
        self.chunk = chunk
        self.lease = lease
        self.gate = requests_gate
        self.tally = _Tally()
        self.lost = False
        self.stop_batch: BatchRecord | None = None

    async def run(self, input_key: str) -> None:
        requests = await asyncio.to_thread(read_requests, self.ctx, input_key, self.chunk)
        done = [False] * len(requests)
        tasks = [asyncio.create_task(self._one(i, cid, body, done), name=f"request:{cid}")
                 for i, (cid, body) in enumerate(requests)]
        beat = asyncio.create_task(self._heartbeat(tasks), name="chunk-heartbeat")
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if self.lost:
            log.warning("lost the lease on chunk %s/%s; its results are discarded",
                        self.chunk.batch_id, self.chunk.chunk_no)
            return
        if self.stop_batch is not None and self.stop_batch.stop_reason is not None:
            code = self.stop_batch.stop_reason.error_code
            for (cid, _), finished in zip(requests, done, strict=True):
                if not finished:
                    self.tally.err.append(results.stop_error_line(
                        cid, code=code, message=results.STOP_MESSAGES[code]))
        await self._commit()

    async def _one(self, index: int, custom_id: str, body: dict, done: list[bool]) -> None:  # type: ignore[type-arg]
        async with self.gate:
            outcome = await run_request(
                custom_id=custom_id, body=body, registry=self.ctx.registry,
                clock=self.ctx.clock, timeout=self.ctx.settings.request_timeout_seconds,
            )
        self.tally.add(outcome)
        done[index] = True

    async def _heartbeat(self, tasks: list[asyncio.Task[None]]) -> None:
        settings = self.ctx.settings
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            batch = await self.ctx.store.heartbeat_chunk(
                self.chunk, self.lease, progress=self.tally.progress(),
                now=self.ctx.clock.now(), lease_seconds=settings.lease_seconds,
            )
            stopping = batch is not None and (
                batch.stop_reason is not None or batch.expires_at <= self.ctx.clock.now()
            )
            if batch is None or stopping:
                # Zero rows: the chunk is no longer ours, so stop calling the engine at once.
                self.lost = batch is None
                if batch is not None and batch.stop_reason is None:
                    await self.ctx.store.mark_expired(now=int(self.ctx.clock.now()))
                    batch = await self.ctx.store.get_batch(batch.id, owner=None)
                self.stop_batch = batch
                for task in tasks:
                    task.cancel()
                return

    async def _commit(self) -> None:
        ctx, chunk, tally = self.ctx, self.chunk, self.tally
        ok_key = err_key = None
        if tally.ok:
            ok_key = part_key(chunk.batch_id, chunk.chunk_no, self.lease.generation, "ok")
            await asyncio.to_thread(_write_lines, ctx, ok_key, tally.ok)
        if tally.err:
            err_key = part_key(chunk.batch_id, chunk.chunk_no, self.lease.generation, "err")
            await asyncio.to_thread(_write_lines, ctx, err_key, tally.err)
        committed = await ctx.store.commit_chunk(
            chunk, self.lease, ok_part=ok_key, err_part=err_key, progress=tally.progress(),
            now=int(ctx.clock.now()),
        )
        if not committed:
            for key in (ok_key, err_key):
                if key:
                    ctx.blobs.delete(key)


def _write_lines(ctx: WorkerContext, key: str, lines: list[bytes]) -> None:
    with ctx.blobs.writer(key) as out:
        out.writelines(lines)
