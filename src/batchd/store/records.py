"""Plain, frozen records that the store hands out. Request models never reach the store."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
# Unfinished: the batch still holds its owner's quota and counts against its batch limit.
ACTIVE_STATUSES = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING,
                   BatchStatus.CANCELLING)


class StopReason(enum.StrEnum):
    """Why a batch stops before all of its requests ran; each maps to an error-file code."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def error_code(self) -> str:
        return f"batch_{self.value}"


class ChunkState(enum.StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    # Given up after too many worker deaths. Only older versions produced this (deaths now
    # count against the requests in flight, see worker/deaths.py); assembly still reads it.
    FAILED = "failed"


class _Record:
    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class ApiKey(_Record):
    id: str
    name: str
    owner: str
    role: str
    prefix: str
    created_at: int
    revoked_at: int | None
    tier: str = "core"


@dataclass(frozen=True, kw_only=True)
class FileRecord(_Record):
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None
    status: str
    blob_key: str
    deleted_at: int | None = None
    seq: int = 0


@dataclass(frozen=True, kw_only=True)
class BatchRecord(_Record):
    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    model: str | None = None
    output_expires_after: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    stop_reason: StopReason | None = None
    seq: int = 0
    tier: str | None = None
    key_id: str | None = None

    def __post_init__(self) -> None:
        # Rows carry plain strings; normalise to enums once, here.
        object.__setattr__(self, "status", BatchStatus(self.status))
        if self.stop_reason is not None:
            object.__setattr__(self, "stop_reason", StopReason(self.stop_reason))


@dataclass(frozen=True, kw_only=True)
class ChunkPlan:
    """A slice of the input file, decided at validation: bytes [byte_start, byte_end)."""

    chunk_no: int
    byte_start: int
    byte_end: int
    line_start: int  # 1-based number of the chunk's first line
    n_lines: int  # request lines in the slice (blank lines are not requests)


# One committed result part of a chunk (write-once blobs): {"ok": key | None, "err": key | None,
# "n_ok": lines, "n_err": lines, "b_ok": bytes of the ok lines}. Parts written before the
# counts existed have only the keys.
Part = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Chunk(_Record):
    batch_id: str
    chunk_no: int
    byte_start: int
    byte_end: int
    line_start: int
    n_lines: int
    state: ChunkState
    owner: str | None
    generation: int
    attempts: int
    parts: list[Part] = field(default_factory=list)
    done_ok: int = 0
    done_err: int = 0
    done_input_tokens: int = 0
    done_output_tokens: int = 0
    done_cached_tokens: int = 0
    in_flight: dict[str, Any] | None = None
    strikes: dict[str, list[int]] | None = None
    failed_runs: int = 0  # runs that failed for no request's doing (worker/chunks.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", ChunkState(self.state))

    @property
    def committed(self) -> ChunkProgress:
        return ChunkProgress(n_ok=self.done_ok, n_err=self.done_err,
                             input_tokens=self.done_input_tokens,
                             output_tokens=self.done_output_tokens,
                             cached_tokens=self.done_cached_tokens)


@dataclass(frozen=True)
class ChunkDone:
    """When a chunk was done, and what it recorded (a batch's progress over time)."""

    finished_at: float
    done_ok: int
    done_err: int
    done_output_tokens: int


@dataclass(frozen=True)
class ChunkRun:
    """A finished chunk's span, from its first claim to its commit, and what it did then."""

    started_at: float
    finished_at: float
    lines: int
    output_tokens: int


@dataclass(frozen=True, kw_only=True)
class ChunkProgress:
    """What a chunk has produced so far (live counts) or in total (at commit)."""

    n_ok: int = 0
    n_err: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    def __add__(self, other: ChunkProgress) -> ChunkProgress:
        return ChunkProgress(n_ok=self.n_ok + other.n_ok, n_err=self.n_err + other.n_err,
                             input_tokens=self.input_tokens + other.input_tokens,
                             output_tokens=self.output_tokens + other.output_tokens,
                             cached_tokens=self.cached_tokens + other.cached_tokens)


@dataclass(frozen=True, kw_only=True)
class Lease:
    """Proof of ownership: valid while (owner, generation) still match the row."""

    owner: str
    generation: int


@dataclass(frozen=True, kw_only=True)
class WebhookEndpoint(_Record):
    id: str
    owner: str
    url: str
    events: list[str]
    secret: str
    created_at: int
    disabled_at: int | None = None
    disabled_reason: str | None = None
    deleted_at: int | None = None


@dataclass(frozen=True, kw_only=True)
class WebhookEvent(_Record):
    id: str
    owner: str
    type: str
    created_at: int
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class WebhookDelivery(_Record):
    id: str
    event_id: str
    endpoint_id: str
    state: str  # pending, delivered, failed
    attempts: int
    next_attempt_at: float
    created_at: int
    lease_until: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class UploadRecord(_Record):
    id: str
    owner: str
    filename: str
    purpose: str
    mime_type: str
    bytes: int
    status: str
    created_at: int
    expires_at: int
    file_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class UploadPart(_Record):
    id: str
    upload_id: str
    created_at: int
    bytes: int
    blob_key: str


@dataclass(frozen=True, kw_only=True)
class UsageAdd:
    """Usage to add to one row."""

    minute: int
    owner: str
    key_id: str
    model: str
    kind: str
    batch: bool
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.minute, self.owner, self.key_id, self.model, self.kind, int(self.batch))

    def row(self) -> dict[str, Any]:
        return {"minute": self.minute, "owner": self.owner, "key_id": self.key_id,
                "model": self.model, "kind": self.kind, "batch": int(self.batch),
                "requests": self.requests, "input_tokens": self.input_tokens,
                "cached_tokens": self.cached_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True, kw_only=True)
class UsageQuery:
    """Which usage to read, and how to sum it: buckets of `width` seconds from `start`
    (inclusive) to `end` (exclusive), one result per bucket and combination of `group_by`."""

    kind: str
    start: int
    end: int
    width: int
    group_by: tuple[str, ...] = ()
    owner: str | None = None  # None: every owner's (an admin)
    owners: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    key_ids: tuple[str, ...] = ()
    batch: bool | None = None
