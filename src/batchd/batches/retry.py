"""Re-run only what failed: a new batch whose input holds the original's lines that failed,
were cancelled or expired (every line of its error file), with the same custom_ids and bodies.

A batchd extension (`POST /v1/batches/{id}/retry`). The new batch goes through the same
validation, limits and quotas as any other, and says where it came from in its metadata
(`retry_of`).
"""

from __future__ import annotations

import asyncio

import orjson

from batchd import ids
from batchd.batches.service import BatchService
from batchd.clock import Clock
from batchd.errors import BatchdError, Conflict, InvalidRequest
from batchd.files import BATCH_FILE_EXPIRY, blob_key
from batchd.limits.tiers import TiersFile
from batchd.openai.batches import BatchObject, CreateBatchRequest
from batchd.openai.metadata import MAX_METADATA_PAIRS
from batchd.store.blobs import BlobStore
from batchd.store.records import BatchRecord, BatchStatus, FileRecord
from batchd.store.roles import ApiStore


class BatchRetry:
    def __init__(self, *, store: ApiStore, blobs: BlobStore, batches: BatchService,
                 clock: Clock) -> None:
        self.store, self.blobs, self.batches, self.clock = store, blobs, batches, clock

    async def retry(self, *, scope: str | None, batch_id: str, tiers: TiersFile) -> BatchObject:
        original = await self.batches.record(owner=scope, batch_id=batch_id)
        # The new batch is the owner's, under the original's tier and its limits (an admin
        # retrying it does not lend it the admin's).
        tier, limits = tiers.resolve(original.tier)
        max_concurrent = limits.max_concurrent_batches
        if not original.status.terminal:
            raise Conflict(f"Batch {batch_id} is still {original.status.value}; retry it once "
                           "it has finished (or cancel it first).", code="batch_not_finished")
        errors = (await self.store.get_file(original.error_file_id, owner=None)
                  if original.error_file_id else None)
        never_ran = (original.in_progress_at is None
                     and original.status in (BatchStatus.CANCELLED, BatchStatus.EXPIRED))
        if errors is None and not never_ran:
            raise InvalidRequest(_nothing_to_retry(original), code="nothing_to_retry",
                                 param="batch_id")
        source = await self.store.get_file(original.input_file_id, owner=None)
        if source is None:
            raise Conflict(f"The input file {original.input_file_id} of batch {batch_id} no "
                           "longer exists, so its lines cannot be sent again.",
                           code="input_file_missing")
        if errors is None or never_ran:
            # Cancelled or expired before any request ran: every line again, from the input
            # itself (its error file lists only the lines whose custom_id could be read).
            return await self._create(original, source.id, tier, max_concurrent)
        file_id = ids.file_id()
        key = blob_key(file_id)
        lines, size = await asyncio.to_thread(self._write_input, errors.blob_key,
                                              source.blob_key, key)
        if lines == 0:
            await asyncio.to_thread(self.blobs.delete, key)
            raise InvalidRequest(_nothing_to_retry(original), code="nothing_to_retry",
                                 param="batch_id")
        now = int(self.clock.now())
        try:
            await self.store.insert_file(FileRecord(
                id=file_id, owner=original.owner, purpose="batch",
                filename=f"{original.id}_retry.jsonl", bytes=size, created_at=now,
                expires_at=now + BATCH_FILE_EXPIRY, status="processed", blob_key=key))
        except BaseException:
            await asyncio.to_thread(self.blobs.delete, key)
            raise
        try:
            return await self._create(original, file_id, tier, max_concurrent)
        except BatchdError:  # refused (a limit): the file is of no use to anyone
            await self.store.delete_file(file_id, owner=None, now=now)
            raise

    async def _create(self, original: BatchRecord, input_file_id: str, tier: str | None,
                      max_concurrent: int | None) -> BatchObject:
        return await self.batches.create(
            owner=original.owner, tier=tier, max_concurrent=max_concurrent,
            key_id=original.key_id,  # its usage counts where the original's did
            request=CreateBatchRequest(
                input_file_id=input_file_id, endpoint=original.endpoint,
                completion_window=original.completion_window,
                metadata=_metadata(original),
                output_expires_after=(
                    {"anchor": "created_at", "seconds": original.output_expires_after}
                    if original.output_expires_after else None)))

    def _write_input(self, errors_key: str, input_key: str, key: str) -> tuple[int, int]:
        """Copy the input lines whose custom_id is in the error file; (lines, bytes)."""
        failed = set()
        for raw in self.blobs.lines(errors_key):
            try:
                custom_id = orjson.loads(raw)["custom_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(custom_id, str):
                failed.add(custom_id)
        lines = size = 0
        with self.blobs.writer(key) as out:
            for raw in self.blobs.lines(input_key):
                if not raw.strip():
                    continue
                try:
                    custom_id = orjson.loads(raw).get("custom_id")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
                if isinstance(custom_id, str) and custom_id in failed:
                    failed.discard(custom_id)  # once, as in the original
                    line = raw if raw.endswith(b"\n") else raw + b"\n"
                    out.write(line)
                    lines += 1
                    size += len(line)
        return lines, size


def _metadata(original: BatchRecord) -> dict[str, str]:
    """The original's metadata (as many keys as fit) and `retry_of`."""
    kept = {k: v for k, v in (original.metadata or {}).items() if k != "retry_of"}
    kept = dict(list(kept.items())[:MAX_METADATA_PAIRS - 1])
    return {**kept, "retry_of": original.id}


def _nothing_to_retry(batch: BatchRecord) -> str:
    if batch.status is BatchStatus.FAILED and batch.in_progress_at is None:
        return (f"Batch {batch.id} failed validation, so none of its requests ran; fix the "
                "input file (its errors list the lines) and create a new batch.")
    return f"Batch {batch.id} has no failed, cancelled or expired requests to retry."
