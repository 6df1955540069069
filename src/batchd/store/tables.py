"""SQLAlchemy Core tables, and the row values of the records stored in them. Their history
lives in `migrations/versions/`; keep both in step."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    literal_column,
)

from batchd.store.records import ChunkProgress, ChunkState

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Column("tier", String(40), nullable=False, default="core"),
)

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("filename", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("status", String(20), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("deleted_at", BigInteger),
    Column("seq", BigInteger, nullable=False),  # creation order, for stable paging
    Index("ix_files_owner_seq", "owner", "seq"),
    Index("ix_files_seq", "seq"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("endpoint", String(100), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(10), nullable=False),
    Column("status", String(20), nullable=False),
    Column("model", Text),
    Column("metadata", JSON),
    Column("output_expires_after", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger),
    Column("finalizing_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("failed_at", BigInteger),
    Column("expired_at", BigInteger),
    Column("cancelling_at", BigInteger),
    Column("cancelled_at", BigInteger),
    Column("errors", JSON),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("stop_reason", String(20)),
    # Batch-level work (validation, assembly) is leased like chunks are.
    Column("lease_owner", String(64)),
    Column("lease_generation", Integer, nullable=False, default=0),
    Column("lease_expires_at", Float),
    Column("seq", BigInteger, nullable=False),  # creation order, for stable paging
    Column("tier", String(40)),  # the creating key's tier: its limits apply to the batch
    Column("key_id", String(64)),  # the creating key: its usage is counted under it
    Index("ix_batches_owner_seq", "owner", "seq"),
    Index("ix_batches_seq", "seq"),
    Index("ix_batches_status", "status"),
)

chunks = Table(
    "chunks",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id"), primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    Column("byte_start", BigInteger, nullable=False),
    Column("byte_end", BigInteger, nullable=False),
    Column("line_start", Integer, nullable=False),
    Column("n_lines", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("owner", String(64)),
    Column("generation", Integer, nullable=False, default=0),
    Column("lease_expires_at", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("deadline", BigInteger, nullable=False),  # the batch's expires_at, for claim order
    Column("n_ok", Integer, nullable=False, default=0),
    Column("n_err", Integer, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    # Committed result parts (write-once blobs), in order: [{"ok": key|null, "err": key|null}].
    Column("parts", JSON, nullable=False, default=list),
    # Committed totals (checkpoints and the final commit); n_ok… above add in-flight progress.
    Column("done_ok", Integer, nullable=False, default=0),
    Column("done_err", Integer, nullable=False, default=0),
    Column("done_input_tokens", BigInteger, nullable=False, default=0),
    Column("done_output_tokens", BigInteger, nullable=False, default=0),
    Column("done_cached_tokens", BigInteger, nullable=False, default=0),
    # What the current run may have started and not yet recorded: {"ids": [...], "alone":
    # bool, "life": the worker process}, written before those requests start. Still set when
    # a run's worker died, so the next run knows which requests were in flight at the death;
    # cleared by a clean end. "crash": what it died of, when it left a trace (deaths.py).
    Column("in_flight", JSON),
    # Deaths each request was in flight for: {custom_id: [deaths, deaths_alone, crashes,
    # crashes_alone]} (records of older versions hold only the first two).
    Column("strikes", JSON),
    # The batch's model (None: its lines name several): a worker claims only chunks of the
    # models it serves.
    Column("model", Text),
    # Runs that failed for no request's doing (a fault in batchd, not a death): after
    # BATCHD_MAX_ATTEMPTS of them the chunk's remaining requests are failed, not run again.
    Column("failed_runs", Integer, nullable=False, default=0),
    # When the chunk was first claimed and when it was done (seconds, the workers' clock):
    # what the model gets through while it has work, for a file's estimate.
    Column("started_at", Float),
    Column("finished_at", Float),
    Index("ix_chunks_claim", "state", "deadline"),
    Index("ix_chunks_finished", "finished_at"),
)

# A chunk not yet done, as the partial index below has it: queries that name this very term
# (literals, not parameters: SQLite and PostgreSQL use a partial index only for a WHERE they
# can see implies its own) reach a batch's first unfinished chunk past however many are
# done, so claims and commits cost the same on the last chunk of a huge batch as on the
# first (migration 0011).
CHUNK_UNFINISHED = chunks.c.state.in_([literal_column(f"'{state.value}'")
                                        for state in (ChunkState.PENDING, ChunkState.LEASED)])
Index("ix_chunks_unfinished", chunks.c.batch_id, chunks.c.chunk_no,
      sqlite_where=CHUNK_UNFINISHED, postgresql_where=CHUNK_UNFINISHED)

# Tokens a batch may consume per model (prompt estimate + maximum output), counted at
# validation. An owner's enqueued tokens are the sum over its unfinished batches, so a quota
# is released by the batch reaching any terminal status, with nothing to clean up.
batch_tokens = Table(
    "batch_tokens",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id"), primary_key=True),
    Column("model", Text, primary_key=True),
    Column("tokens", BigInteger, nullable=False),
)

# Usage, aggregated as it is written: one row per minute, owner, key, model, kind
# (completions, embeddings) and batch-or-real-time, whatever the number of requests. Batch
# usage is added by the fenced write that first records a result part on its chunk (so it is
# counted once, and never for a part that is refused); real-time usage by the request.
usage = Table(
    "usage",
    metadata,
    Column("minute", BigInteger, primary_key=True),  # the minute's start, epoch seconds
    Column("owner", String(200), primary_key=True),
    Column("key_id", String(64), primary_key=True),  # "" when unknown (older batches)
    Column("model", Text, primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("batch", Integer, primary_key=True),  # 1: a batch's requests, 0: real time
    Column("requests", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
)

# Periodic jobs (expiry, purges) that one worker of many runs per period: a worker takes the
# turn by moving `due_at` forward, fenced on its old value.
housekeeping = Table(
    "housekeeping",
    metadata,
    Column("job", String(40), primary_key=True),
    Column("due_at", Float, nullable=False),
)

# Webhooks: endpoints per owner, events recorded in the transaction that changes a batch's
# status (the outbox), and one delivery per (event, endpoint) with its attempts.
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("secret", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("disabled_at", BigInteger),
    Column("disabled_reason", Text),
    Column("deleted_at", BigInteger),
    Index("ix_webhook_endpoints_owner", "owner"),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("type", String(40), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("event_id", String(64), ForeignKey("webhook_events.id"), nullable=False),
    Column("endpoint_id", String(64), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("state", String(20), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_until", Float),  # a sender holds it until then
    Column("created_at", BigInteger, nullable=False),
    Column("history", JSON, nullable=False, default=list),  # [{"at", "status", "error"}]
    Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
)

# Uploads API: a file sent in parts (each a blob, written as it arrives), joined on complete.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("filename", Text, nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("mime_type", String(200), nullable=False),
    Column("bytes", BigInteger, nullable=False),  # declared at creation
    Column("status", String(20), nullable=False),  # pending, completed, cancelled, expired
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("file_id", String(64)),
    Index("ix_uploads_status_expires", "status", "expires_at"),
)

upload_parts = Table(
    "upload_parts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("upload_id", String(64), ForeignKey("uploads.id"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("blob_key", Text, nullable=False),
    Index("ix_upload_parts_upload", "upload_id"),
)


def as_row(record: object) -> dict[str, Any]:
    """A record's fields as the values of its row."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}  # type: ignore[arg-type]


def live_values(progress: ChunkProgress) -> dict[str, int]:
    """A chunk's progress as its live counts (`n_ok`…: committed and in flight)."""
    return dataclasses.asdict(progress)


def done_values(progress: ChunkProgress) -> dict[str, int]:
    """A chunk's progress as its committed counts (`done_ok`…)."""
    return {"done_ok": progress.n_ok, "done_err": progress.n_err,
            "done_input_tokens": progress.input_tokens,
            "done_output_tokens": progress.output_tokens,
            "done_cached_tokens": progress.cached_tokens}
