"""Where metadata and files live: SQLite and the data dir (the embedded default), or
PostgreSQL and an S3-compatible object store shared by many hosts.

Also what lets hosts agree with each other: the database server's clock, and telling an outage
of either backend (retry later: 503, pause) from a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time

from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from batchd.errors import ServiceUnavailable
from batchd.settings import Settings
from batchd.store.blobs import BlobStore, LocalBlobStore
from batchd.store.metadata import MetadataStore

log = logging.getLogger(__name__)

# SQLSTATE classes of a database that cannot serve now: connection exception, insufficient
# resources (too many connections), operator intervention (shutting down, starting up).
_OUTAGE_SQLSTATES = ("08", "53", "57")


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_url:
        from batchd.store.s3_blobs import S3BlobStore

        return S3BlobStore(settings.blob_url)
    blobs = LocalBlobStore(settings.blob_dir)
    blobs.sweep_temporary()
    return blobs


def outage(exc: BaseException) -> str | None:
    """If `exc` means the database or the object store cannot be reached or cannot serve for
    now, a one-line reason; None for anything else (a bug, bad input, schema drift), which
    stays a 500 with its traceback in the log."""
    if isinstance(exc, ServiceUnavailable):
        return exc.message
    if isinstance(exc, PoolTimeout):
        return "the database connection pool is exhausted (every connection is busy)"
    if isinstance(exc, DBAPIError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
        if exc.connection_invalidated or (sqlstate and str(sqlstate)[:2] in _OUTAGE_SQLSTATES):
            return f"the database is unavailable ({_first_line(cause or exc.orig)})"
        if sqlstate and str(sqlstate)[:2] == "28":  # invalid authorization (password, hba)
            return ("the database refused the credentials in BATCHD_DATABASE_URL "
                    f"({_first_line(cause or exc.orig)})")
        text = str(exc.orig).lower()
        if isinstance(exc, OperationalError) and any(m in text for m in _SQLITE_OUTAGES):
            return f"the database is unavailable ({_first_line(exc.orig)})"
        if isinstance(cause, OSError) or "connection is closed" in text:
            return f"the database is unreachable ({_first_line(cause or exc.orig)})"
        return None
    if isinstance(exc, OSError) and _network_error(exc):
        return f"the database is unreachable ({_first_line(exc)})"
    if type(exc).__module__.startswith("asyncpg"):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate and str(sqlstate)[:2] == "28":
            return ("the database refused the credentials in BATCHD_DATABASE_URL "
                    f"({_first_line(exc)})")
        if sqlstate and str(sqlstate)[:2] in _OUTAGE_SQLSTATES:
            return f"the database is unavailable ({_first_line(exc)})"
        if type(exc).__name__ in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return f"the database is unreachable ({_first_line(exc)})"
    return None


# SQLite errors that pass (a busy or unreadable database file), unlike a syntax error or a
# missing table, which are bugs.
_SQLITE_OUTAGES = ("database is locked", "disk i/o error", "unable to open database")
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                   errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                   errno.EHOSTDOWN}


def _network_error(exc: OSError) -> bool:
    """A connection that failed or broke: refused, reset, unreachable, timed out, a name that
    does not resolve, or asyncio's "Multiple exceptions" when every address of a name failed."""
    return (isinstance(exc, ConnectionError | TimeoutError | socket.gaierror)
            or exc.errno in _NETWORK_ERRNOS or str(exc).startswith("Multiple exceptions"))


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


def where(settings: Settings) -> str:
    """The backends, for log lines (never with a password)."""
    database = make_url(settings.resolved_database_url)
    shown = database.render_as_string(hide_password=True)
    return f"database {shown}, files in {settings.blob_url or settings.blob_dir}"


async def preflight(settings: Settings, store: MetadataStore, blobs: BlobStore, *,
                    wait_seconds: float) -> None:
    """Migrate the schema and reach the object store, retrying an outage for up to
    `wait_seconds` (backends started beside batchd may still be coming up). Raises
    `ServiceUnavailable` with one line saying what is wrong."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            await store.migrate()
            check = getattr(blobs, "check", None)
            if check is not None:
                await asyncio.to_thread(check)
            return
        except Exception as exc:
            reason = outage(exc)
            if reason is None:
                raise
            if "credentials" in reason or time.monotonic() + delay > deadline:
                raise ServiceUnavailable(reason[0].upper() + reason[1:] + ".") from exc
            log.warning("%s; retrying in %.0f s", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class DatabaseClock:
    """The database server's clock, read through this host's.

    Leases written by one host are judged by another: with PostgreSQL every host reads time
    as the server does (this host's clock plus an offset measured against `clock_timestamp()`,
    re-measured every `resync_seconds`), so a host whose clock is off cannot steal live
    leases or keep dead ones."""

    def __init__(self, store: MetadataStore, *, resync_seconds: float = 30.0) -> None:
        self.store = store
        self.resync_seconds = resync_seconds
        self.offset = 0.0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return time.time() + self.offset

    async def sync(self) -> None:
        """Measure the offset: the best of three round trips (the shortest is the most
        exact; the error is at most half of it)."""
        samples = []
        for _ in range(3):
            sent = time.time()
            server = await self.store.database_time()
            back = time.time()
            samples.append((back - sent, server - (sent + back) / 2))
        self.offset = min(samples)[1]

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._resync(), name="database-clock")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:
                await self.sync()
            except Exception as exc:  # an outage: keep the last offset
                log.debug("could not read the database clock: %s", outage(exc) or exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
