"""Records and states the store contract starts its cases from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from batchd import ids
from batchd.store.memory import MemoryStore
from batchd.store.metadata import MetadataStore
from batchd.store.records import (
    BatchRecord,
    BatchStatus,
    Chunk,
    ChunkPlan,
    FileRecord,
    Lease,
    UploadPart,
    UploadRecord,
    WebhookEndpoint,
)

NOW = 1_750_000_000.0
LEASE = 30.0
Store = MetadataStore | MemoryStore
Stores = Callable[[], Awaitable[Store]]


def batch_record(owner: str = "alice", **extra: object) -> BatchRecord:
    fields: dict[str, object] = dict(
        id=ids.batch_id(), owner=owner, endpoint="/v1/chat/completions",
        input_file_id="file-x", completion_window="24h", status=BatchStatus.VALIDATING,
        created_at=int(NOW), expires_at=int(NOW) + 86400, model="m")
    return BatchRecord(**fields | extra)  # type: ignore[arg-type]


async def validating_batch(store: Store, record: BatchRecord | None = None, *,
                           worker: str = "validator") -> tuple[BatchRecord, Lease]:
    """A new batch, leased for validation (other batches that need work stay leased)."""
    record = await store.insert_batch(record or batch_record())
    while True:
        claim = await store.claim_batch_task(worker=worker, now=NOW, lease_seconds=LEASE)
        assert claim is not None
        if claim[0].id == record.id:
            return claim


def plans(chunks: int) -> list[ChunkPlan]:
    return [ChunkPlan(chunk_no=n, byte_start=n * 10, byte_end=n * 10 + 10, line_start=n + 1,
                      n_lines=1) for n in range(chunks)]


async def running_batch(store: Store, *, chunks: int, owner: str = "alice",
                        model: str | None = "m", expires_in: int = 86400) -> str:
    """A batch past validation with `chunks` pending chunks."""
    record, lease = await validating_batch(
        store, batch_record(owner, expires_at=int(NOW) + expires_in))
    assert await store.start_batch(record.id, lease, plans=plans(chunks), total=chunks,
                                   model=model, tokens={}, token_limit=None, now=int(NOW))
    return record.id


async def claimed_chunk(store: Store, *, worker: str = "w") -> tuple[str, Chunk, Lease]:
    """A running batch of one chunk, and that chunk claimed by `worker`."""
    batch_id = await running_batch(store, chunks=1)
    claim = await store.claim_chunk(worker=worker, now=NOW, lease_seconds=LEASE)
    assert claim is not None
    return batch_id, *claim


def file_record(owner: str = "alice", **extra: object) -> FileRecord:
    file_id = ids.file_id()
    fields: dict[str, object] = dict(
        id=file_id, owner=owner, purpose="batch", filename="input.jsonl", bytes=1,
        created_at=int(NOW), expires_at=None, status="processed", blob_key=f"files/{file_id}")
    return FileRecord(**fields | extra)  # type: ignore[arg-type]


def upload_record(owner: str = "alice", size: int = 10) -> UploadRecord:
    return UploadRecord(id=ids.upload_id(), owner=owner, filename="big.jsonl", purpose="batch",
                        mime_type="application/jsonl", bytes=size, status="pending",
                        created_at=int(NOW), expires_at=int(NOW) + 3600)


def upload_part(upload: UploadRecord, size: int) -> UploadPart:
    part_id = ids.upload_part_id()
    return UploadPart(id=part_id, upload_id=upload.id, created_at=int(NOW), bytes=size,
                      blob_key=f"uploads/{upload.id}/{part_id}")


def endpoint(owner: str = "alice", *, events: tuple[str, ...] = ("batch.completed",),
             created_at: int = int(NOW)) -> WebhookEndpoint:
    return WebhookEndpoint(id=ids.webhook_endpoint_id(), owner=owner,
                           url="https://hooks.example/x", events=list(events),
                           secret="whsec_test", created_at=created_at)
