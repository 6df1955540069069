"""One typed settings object. Every field can come from a `BATCHD_*` environment variable."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration; see the README's configuration table for each field."""

    model_config = SettingsConfigDict(env_prefix="BATCHD_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./batchd-data")
    models: Path | None = Field(default=None, description="YAML file listing served models")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (postgresql+asyncpg://user:pass@host/db); "
                                  "default: SQLite inside data_dir"
    )
    blob_url: str | None = Field(
        default=None, pattern=r"^s3://[^/]+(/.*)?$",
        description="s3://bucket/prefix for files and results; default: data_dir/blobs")
    backend_wait_seconds: float = Field(
        default=30.0, ge=0, description="how long a start waits for an unreachable database "
                                        "or object store before giving up")
    api_key: str | None = Field(default=None, description="extra key accepted as owner 'default'")
    tiers: Path | None = Field(default=None, description="YAML file of service tiers")
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    auth_failures_per_minute: int = Field(
        default=60, ge=1, description="failed authentications per client address per minute")
    realtime_choices_per_key: int = Field(
        default=8, ge=1, description="real-time completions one key may have generating at once")
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="time a client has to send a request's headers")
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="longest wait for the next piece of a request body")
    keepalive_timeout_seconds: int = Field(
        default=5, ge=1, description="idle connection kept open between requests")
    embedded_worker: bool = True
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="the event loop of `serve` and `worker`: uvloop where it is "
                                    "installed (auto), or asyncio's own")

    max_requests_per_batch: int = Field(default=50_000, ge=1)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_batch_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_upload_total_bytes: int = Field(
        default=8 * 1024 * 1024 * 1024, ge=1,
        description="largest file sent in parts through /v1/uploads")
    max_upload_parts: int = Field(
        default=10_000, ge=1, le=10_000, description="parts one /v1/uploads upload may have")
    max_pending_uploads: int = Field(
        default=20, ge=1, description="unfinished /v1/uploads uploads one owner may have")
    max_listed_errors: int = Field(default=100, ge=1)

    chunk_lines: int = Field(default=256, ge=1, description="input lines per unit of work")
    worker_concurrency: int | None = Field(
        default=None, ge=1, description="cap on requests in flight per model per worker "
                                        "(default: what each engine can take)")
    worker_chunks: int = Field(default=2, ge=1, description="chunks a worker holds per model")
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    poll_seconds: float = Field(default=0.5, gt=0, description="idle worker polling interval")
    poll_max_seconds: float | None = Field(
        default=None, gt=0, description="longest idle polling interval: it doubles from "
                                        "poll_seconds while polls find nothing (default: 8 "
                                        "times poll_seconds)")
    checkpoint_seconds: float = Field(default=1.0, gt=0, description="result flush interval")
    checkpoint_results: int = Field(
        default=1024, ge=1, description="finished results that trigger a flush sooner")
    max_attempts: int = Field(
        default=2, ge=1, description="worker crashes (a fatal signal or an error, not a kill "
                                     "without a trace) under a request running alone before "
                                     "it is failed; also failed runs of a chunk (no request's "
                                     "doing) before its remaining requests are failed")
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    request_retries: int = Field(default=1, ge=0, description="retries after a timeout/crash")
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    webhook_allowed_hosts: str | None = Field(
        default=None, description="comma-separated hosts webhooks may call (*.example.com "
                                  "for subdomains); default: any host")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="longest wait for a webhook receiver's answer")
    webhook_first_retry_seconds: float = Field(
        default=5.0, gt=0, description="first wait before a failed delivery is tried again "
                                       "(later waits grow to ~a day in all)")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve /metrics on this port too, without a "
                                                  "key (API and worker processes)")
    metrics_host: str = Field(default="127.0.0.1", description="bind address of metrics_port")

    log_level: str = "info"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            # The usual libpq spellings mean batchd's PostgreSQL driver (asyncpg).
            for plain in ("postgresql://", "postgres://"):
                if self.database_url.startswith(plain):
                    return "postgresql+asyncpg://" + self.database_url.removeprefix(plain)
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'batchd.sqlite3').resolve()}"

    @property
    def idle_poll_cap(self) -> float:
        """The longest wait between an idle worker's polls (see `poll_max_seconds`)."""
        cap = self.poll_max_seconds if self.poll_max_seconds is not None else 8 * self.poll_seconds
        return max(cap, self.poll_seconds)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
