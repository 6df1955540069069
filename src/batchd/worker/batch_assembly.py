"""Assembling a batch that ended: every committed part (and a stop error for each request
that never ran) streamed into its output and error files, published with its final status."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Iterator
from typing import BinaryIO

import orjson

from batchd import ids
from batchd.batches import results
from batchd.batches.validation import UTF8_BOM
from batchd.limits.tiers import batch_request_limit
from batchd.store.blobs import BlobMissing
from batchd.store.records import (
    BatchRecord,
    BatchStatus,
    Chunk,
    ChunkProgress,
    ChunkState,
    FileRecord,
    Lease,
    StopReason,
)
from batchd.worker.batch_lease import Abandoned, with_lease
from batchd.worker.context import WorkerContext
from batchd.worker.inputs import chunk_requests, input_key_of

log = logging.getLogger(__name__)


_FINAL_STATUS = {
    None: BatchStatus.COMPLETED,
    StopReason.CANCELLED: BatchStatus.CANCELLED,
    StopReason.EXPIRED: BatchStatus.EXPIRED,
    StopReason.FAILED: BatchStatus.FAILED,
}


def _unrun_lines(ctx: WorkerContext, input_key: str, chunk: Chunk, done: set[str],
                 code: str) -> Iterator[bytes]:
    message = results.STOP_MESSAGES[code]
    try:
        for custom_id, _ in chunk_requests(ctx, input_key, chunk):
            if custom_id not in done:
                yield results.stop_error_line(custom_id, code=code, message=message)
    except BlobMissing:
        # The input is gone (the batch's `errors` say so); these requests cannot be named.
        log.error("batch %s: input missing, unrun requests of chunk %d are not listed",
                  chunk.batch_id, chunk.chunk_no)


def _never_validated_lines(ctx: WorkerContext, input_key: str, code: str, limit: int,
                           stop: threading.Event) -> Iterator[bytes]:
    """A stop line for each request of a batch that stopped while validating (no chunks were
    cut): every line's `custom_id` once, in file order, up to the batch's request limit
    (beyond it the batch could never have run). A line whose `custom_id` cannot be read (not
    JSON, no non-empty string `custom_id`, a repeat) names no request and is left out."""
    message = results.STOP_MESSAGES[code]
    seen: set[bytes] = set()  # digests, as validation keeps them: flat in the file's size
    try:
        for n, raw in enumerate(ctx.blobs.lines(input_key)):
            if n % 4096 == 0 and stop.is_set():
                raise Abandoned
            if n == 0 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                continue
            digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
            if digest in seen:
                continue
            if len(seen) >= limit:
                break
            seen.add(digest)
            yield results.stop_error_line(custom_id, code=code, message=message)
    except BlobMissing:
        log.error("batch input %s is missing: its requests are not listed", input_key)


def _copy_part(ctx: WorkerContext, key: str | None, sink: BinaryIO,
               done: set[str] | None) -> int:
    """Append a part to a result file; returns its line count. With `done`, note the part's
    custom_ids there (needed only for a chunk that did not finish: the rest of its requests
    are reported); without, copy the bytes as they are."""
    if not key:
        return 0
    n = 0
    if done is None:
        for piece in ctx.blobs.read_range(key):
            sink.write(piece)
            n += piece.count(b"\n")
        return n
    for line in ctx.blobs.lines(key):
        done.add(orjson.loads(line)["custom_id"])
        sink.write(line)
        n += 1
    return n


async def assemble(ctx: WorkerContext, batch: BatchRecord, lease: Lease) -> None:
    """Stream every committed part (and a stop error for each request that never ran) into
    the output and error files, then publish both with the terminal status at once."""
    chunks = await ctx.store.list_chunks(batch.id)
    stop_reason = batch.stop_reason
    status = _FINAL_STATUS[stop_reason]
    input_key = await input_key_of(ctx, batch)
    out_key = f"batches/{batch.id}/output-g{lease.generation}.jsonl"
    err_key = f"batches/{batch.id}/errors-g{lease.generation}.jsonl"

    # Stopped (cancelled, expired) before validation cut the input into chunks: its requests
    # never ran, and are listed from the input itself like any other that never ran.
    never_validated = (not chunks and batch.in_progress_at is None
                       and stop_reason is not None)
    _, tier = ctx.tiers.resolve(batch.tier)

    def write(stop: threading.Event) -> ChunkProgress:
        totals = ChunkProgress()
        with ctx.blobs.writer(out_key) as out, ctx.blobs.writer(err_key) as err:
            if never_validated:
                assert stop_reason is not None
                unrun = 0
                limit = batch_request_limit(tier, ctx.settings.max_requests_per_batch)
                for line in _never_validated_lines(ctx, input_key, stop_reason.error_code,
                                                   limit, stop):
                    err.write(line)
                    unrun += 1
                totals = ChunkProgress(n_err=unrun)
            for chunk in chunks:
                if stop.is_set():
                    raise Abandoned
                done: set[str] | None = None if chunk.state is ChunkState.DONE else set()
                n_ok = n_err = 0
                for part in chunk.parts:
                    n_ok += _copy_part(ctx, part.get("ok"), out, done)
                    n_err += _copy_part(ctx, part.get("err"), err, done)
                if done is not None:
                    code = (stop_reason.error_code if stop_reason is not None
                            else "request_failed")
                    for line in _unrun_lines(ctx, input_key, chunk, done, code):
                        err.write(line)
                        n_err += 1
                totals = totals + ChunkProgress(
                    n_ok=n_ok, n_err=n_err, input_tokens=chunk.done_input_tokens,
                    output_tokens=chunk.done_output_tokens,
                    cached_tokens=chunk.done_cached_tokens)
        return totals

    try:
        counts = await with_lease(ctx, batch, lease, write, abandon_on_stop_reason=False)
    except Abandoned:
        for key in (out_key, err_key):
            await asyncio.to_thread(ctx.blobs.delete, key)
        return
    now = int(ctx.clock.now())
    expires_at = now + batch.output_expires_after if batch.output_expires_after else None

    def record(key: str, suffix: str, n: int) -> FileRecord | None:
        if n == 0:
            ctx.blobs.delete(key)
            return None
        return FileRecord(id=ids.file_id(), owner=batch.owner, purpose="batch_output",
                          filename=f"{batch.id}_{suffix}.jsonl", bytes=ctx.blobs.size(key),
                          created_at=now, expires_at=expires_at, status="processed",
                          blob_key=key)

    # Off the event loop: on S3 each of these is a network call.
    output_file = await asyncio.to_thread(record, out_key, "output", counts.n_ok)
    error_file = await asyncio.to_thread(record, err_key, "error", counts.n_err)
    finished = await ctx.store.finish_batch(batch.id, lease, status=status,
                                            output_file=output_file, error_file=error_file,
                                            counts=counts, now=now,
                                            total=counts.n_err if never_validated else None)
    if not finished:  # another worker took over; it publishes its own generation's files
        for key in (out_key, err_key):
            await asyncio.to_thread(ctx.blobs.delete, key)
        return
    # The parts were copied into the result files; drop them (and any a crash orphaned).
    await asyncio.to_thread(ctx.blobs.delete_prefix, f"batches/{batch.id}/parts/")
    log.info("batch %s is %s (%d ok, %d failed)", batch.id, status.value, counts.n_ok,
             counts.n_err)
