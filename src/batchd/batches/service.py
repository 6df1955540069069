"""Batch operations a caller can ask for: create, read, list, cancel, and the output so far."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchd import ids
from batchd.batches.partial import Frontier, Page, output_page
from batchd.batches.timeline import progress_timeline
from batchd.clock import Clock
from batchd.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from batchd.limits.errors import ActiveBatchLimit
from batchd.openai.batches import (
    COMPLETION_WINDOWS,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchUsage,
    CreateBatchRequest,
    InputTokensDetails,
    OutputTokensDetails,
    RequestCounts,
)
from batchd.openai.metadata import check_metadata
from batchd.read_budget import Reservation
from batchd.serving.endpoints import OPERATIONS
from batchd.store.blobs import BlobStore
from batchd.store.records import BatchRecord, BatchStatus, ChunkProgress
from batchd.store.roles import ApiStore

SUPPORTED_ENDPOINTS = tuple(OPERATIONS)
KNOWN_ENDPOINTS = (
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
)


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


def batch_object(record: BatchRecord, live: ChunkProgress | None = None) -> BatchObject:
    """The wire object of a stored batch. `live` carries counts summed from chunks while the
    batch runs; a terminal batch has its final counts on the record itself."""
    if record.status.terminal or live is None:
        counts = ChunkProgress(n_ok=record.completed, n_err=record.failed,
                               input_tokens=record.input_tokens,
                               output_tokens=record.output_tokens,
                               cached_tokens=record.cached_tokens)
    else:
        counts = live
    errors = None
    if record.errors:
        errors = BatchErrors(data=[BatchError(**e) for e in record.errors])
    return BatchObject(
        id=record.id, endpoint=record.endpoint, model=record.model, errors=errors,
        input_file_id=record.input_file_id, completion_window=record.completion_window,
        status=record.status.value, output_file_id=record.output_file_id,
        error_file_id=record.error_file_id, created_at=record.created_at,
        in_progress_at=record.in_progress_at, expires_at=record.expires_at,
        finalizing_at=record.finalizing_at, completed_at=record.completed_at,
        failed_at=record.failed_at, expired_at=record.expired_at,
        cancelling_at=record.cancelling_at, cancelled_at=record.cancelled_at,
        request_counts=RequestCounts(total=record.total, completed=counts.n_ok,
                                     failed=counts.n_err),
        usage=BatchUsage(
            input_tokens=counts.input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=counts.cached_tokens),
            output_tokens=counts.output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=counts.input_tokens + counts.output_tokens,
        ),
        metadata=record.metadata,
    )


class BatchService:
    def __init__(self, *, store: ApiStore, blobs: BlobStore, clock: Clock,
                 wake: Callable[[], None]) -> None:
        self.store = store
        self.blobs = blobs
        self.clock = clock
        # New or changed work: this process's worker looks now, not at its next poll.
        self.wake = wake

    async def create(self, *, owner: str, request: CreateBatchRequest, tier: str | None = None,
                     key_id: str | None = None,
                     max_concurrent: int | None = None) -> BatchObject:
        """Accept the batch as `validating`; the file itself is checked in the background,
        and problems in it surface as a `failed` batch, as OpenAI does."""
        if request.endpoint not in SUPPORTED_ENDPOINTS:
            if request.endpoint in KNOWN_ENDPOINTS:
                message = (f"The endpoint '{request.endpoint}' is not supported by this "
                           f"server; supported: {', '.join(SUPPORTED_ENDPOINTS)}.")
            else:
                message = (f"Invalid value: '{request.endpoint}'. Supported values are: "
                           f"{', '.join(repr(e) for e in SUPPORTED_ENDPOINTS)}.")
            raise InvalidRequest(message, code="invalid_value", param="endpoint")
        window = COMPLETION_WINDOWS.get(request.completion_window)
        if window is None:
            raise InvalidRequest(
                f"Invalid value: '{request.completion_window}'. Supported values are: "
                f"{', '.join(repr(w) for w in COMPLETION_WINDOWS)}.",
                code="invalid_value", param="completion_window",
            )
        metadata = check_metadata(request.metadata)
        now = int(self.clock.now())
        record = BatchRecord(
            id=ids.batch_id(), owner=owner, endpoint=request.endpoint,
            input_file_id=request.input_file_id, completion_window=request.completion_window,
            status=BatchStatus.VALIDATING, created_at=now, expires_at=now + window,
            metadata=metadata, tier=tier, key_id=key_id,
            output_expires_after=(request.output_expires_after.seconds
                                  if request.output_expires_after else None),
        )
        try:
            stored = await self.store.insert_batch(record, max_active=max_concurrent)
        except ActiveBatchLimit as over:
            raise TooManyRequests(
                f"You have {over.active} unfinished batches, the most your tier allows at "
                f"once ({over.limit}); create this one when one of them has finished.",
                code="concurrent_batch_limit_exceeded",
                headers={"x-should-retry": "false"}) from over
        self.wake()  # it needs validating
        return batch_object(stored)

    async def record(self, *, owner: str | None, batch_id: str) -> BatchRecord:
        """The stored batch, if `owner` may see it (None: anyone's); 404 otherwise."""
        record = await self.store.get_batch(batch_id, owner=owner)
        if record is None:
            raise _not_found(batch_id)
        return record

    async def _present(self, record: BatchRecord) -> BatchObject:
        live = None
        if not record.status.terminal:
            live = (await self.store.live_progress([record.id])).get(record.id)
        return batch_object(record, live)

    async def get(self, *, owner: str | None, batch_id: str) -> BatchObject:
        """The batch as clients poll it: one read of the store."""
        found = await self.store.get_batch_progress(batch_id, owner=owner)
        if found is None:
            raise _not_found(batch_id)
        return batch_object(*found)

    async def progress(self, *, owner: str | None, batch_id: str) -> dict[str, Any]:
        """Its finished and failed requests and output tokens over time (timeline.py)."""
        record = await self.record(owner=owner, batch_id=batch_id)
        live = (await self.store.live_progress([record.id])).get(record.id)
        return progress_timeline(record, await self.store.chunks_done(record.id), live,
                                 now=self.clock.now())

    async def list(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchObject], bool]:
        records, has_more = await self.store.list_batches(owner=owner, after=after, limit=limit)
        active = [r.id for r in records if not r.status.terminal]
        live = await self.store.live_progress(active)
        return [batch_object(r, live.get(r.id)) for r in records], has_more

    async def output_page(self, batch: BatchRecord, after: Frontier, *, limit: int,
                          held: Reservation, budget: int) -> Page:
        """The output lines committed after `after`, while the batch runs or after it
        ended (batches/partial.py), within the reservation `held`."""
        return await output_page(self.store, self.blobs, batch, after, limit=limit,
                                 held=held, budget=budget)

    async def cancel(self, *, owner: str | None, batch_id: str) -> BatchObject:
        batch = await self._cancel(owner, batch_id)
        self.wake()  # someone must finish the cancel
        return batch

    async def _cancel(self, owner: str | None, batch_id: str) -> BatchObject:
        record = await self.record(owner=owner, batch_id=batch_id)
        if record.status in (BatchStatus.CANCELLED, BatchStatus.CANCELLING):
            return await self._present(record)
        if not record.status.terminal:
            updated = await self.store.request_cancel(batch_id, owner=owner,
                                                      now=int(self.clock.now()))
            record = updated or record
        if record.status in (BatchStatus.CANCELLED, BatchStatus.CANCELLING):
            return await self._present(record)
        if record.stop_reason is not None and not record.status.terminal:
            raise Conflict(f"Cannot cancel a batch that is already stopping "
                           f"({record.stop_reason.value}).")
        raise Conflict(f"Cannot cancel a batch with status '{record.status.value}'.")
