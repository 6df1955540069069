"""Batch operations a caller can ask for: create, read, list, cancel."""

from __future__ import annotations

from typing import Any

from batchd import ids
from batchd.batches.schemas import BatchObject, CreateBatchRequest
from batchd.clock import Clock
from batchd.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from batchd.operations import OPERATIONS
from batchd.settings import COMPLETION_WINDOWS
from batchd.store.metadata import MetadataStore
from batchd.store.records import BatchRecord, BatchStatus
from batchd.store.sql import ActiveBatchLimit

SUPPORTED_ENDPOINTS = tuple(OPERATIONS)
KNOWN_ENDPOINTS = (
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
)
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} key-value "
                             "pairs are allowed.", code="invalid_value", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(f"Invalid 'metadata': keys can be at most {MAX_METADATA_KEY} "
                                 "characters long.", code="invalid_value", param="metadata")
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid type for 'metadata.{key}': expected a string, but "
                                 f"got {type(value).__name__}.", code="invalid_type",
                                 param=f"metadata.{key}")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(f"Invalid 'metadata.{key}': values can be at most "
                                 f"{MAX_METADATA_VALUE} characters long.",
                                 code="invalid_value", param=f"metadata.{key}")
    return dict(metadata)


class BatchService:
    def __init__(self, *, store: MetadataStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(self, *, owner: str, request: CreateBatchRequest, tier: str | None = None,
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
            metadata=metadata, tier=tier,
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
        return BatchObject.of(stored)

    async def _require(self, owner: str | None, batch_id: str) -> BatchRecord:
        record = await self.store.get_batch(batch_id, owner=owner)
        if record is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return record

    async def _present(self, record: BatchRecord) -> BatchObject:
        live = None
        if not record.status.terminal:
            live = (await self.store.live_progress([record.id])).get(record.id)
        return BatchObject.of(record, live)

    async def get(self, *, owner: str | None, batch_id: str) -> BatchObject:
        return await self._present(await self._require(owner, batch_id))

    async def list(
        self, *, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[BatchObject], bool]:
        records, has_more = await self.store.list_batches(owner=owner, after=after, limit=limit)
        active = [r.id for r in records if not r.status.terminal]
        live = await self.store.live_progress(active)
        return [BatchObject.of(r, live.get(r.id)) for r in records], has_more

    async def cancel(self, *, owner: str | None, batch_id: str) -> BatchObject:
        record = await self._require(owner, batch_id)
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
