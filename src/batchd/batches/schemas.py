"""Wire objects of the Files and Batches APIs, in OpenAI's field order."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchd.store.records import BatchRecord, ChunkProgress, FileRecord


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @classmethod
    def of(cls, record: FileRecord) -> FileObject:
        return cls(id=record.id, bytes=record.bytes, created_at=record.created_at,
                   expires_at=record.expires_at, filename=record.filename,
                   purpose=record.purpose, status=record.status)


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchError(BaseModel):
    code: str | None
    message: str | None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, record: BatchRecord, live: ChunkProgress | None = None) -> BatchObject:
        """`live` carries counts summed from chunks while the batch runs; a terminal batch
        has its final counts on the record itself."""
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
        return cls(
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


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatchRequest(BaseModel):
    """The body of POST /v1/batches (strict: a typo in a field name is a 400, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None = None
    output_expires_after: OutputExpiresAfter | None = None
