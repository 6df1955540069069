"""Blobs in any S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph, R2), through obstore.

The interface is the local store's: blocking calls, which batchd makes from worker threads
(never on the event loop). Writers stream as multipart uploads with a small buffer, so memory
stays flat however big the object; an object appears only when its writer exits cleanly (a
failed upload is aborted). Reads of a byte range are ranged GETs.

Credentials and the endpoint come from the standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, …), read by obstore.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlparse

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    InvalidPathError,
    NotModifiedError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import S3Store

from batchd.errors import ServerError, ServiceUnavailable

if TYPE_CHECKING:
    from obstore.store import ClientConfig
from batchd.store.blobs import BlobMissing

_PIECE = 1024 * 1024
# S3's smallest multipart part is 5 MiB; two parts in flight keep a writer under ~15 MiB.
_PART = 5 * 1024 * 1024
_PARTS_IN_FLIGHT = 2
_DELETE_BATCH = 500


class S3BlobStore:
    """Blobs under `s3://bucket/prefix`. Keys are ours (never user filenames)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self._store = S3Store(
            self.bucket, prefix=prefix or None,
            # An unreachable store is reported within seconds (as a 503) rather than retried
            # for minutes inside one API call; workers retry on their own schedule.
            retry_config={"max_retries": 3, "backoff": {"init_backoff":
                          datetime.timedelta(milliseconds=100), "max_backoff":
                          datetime.timedelta(seconds=2), "base": 2},
                          "retry_timeout": datetime.timedelta(seconds=10)},
            client_options=_client_options(),
        )

    def check(self) -> None:
        """Reach the bucket once (start-up): wrong credentials or an unreachable endpoint
        raise a `ServiceUnavailable` whose message says which."""
        with _translated("__batchd_probe__"):
            with contextlib.suppress(FileNotFoundError):
                obstore.head(self._store, "__batchd_probe__")

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write a new object; it becomes visible only if the block exits cleanly."""
        with _translated(key), obstore.open_writer(
                self._store, key, buffer_size=_PART, max_concurrency=_PARTS_IN_FLIGHT) as out:
            yield cast(BinaryIO, _Writer(out))

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                obstore.head(self._store, key)
        except BlobMissing:
            return False
        return True

    def size(self, key: str) -> int:
        with _translated(key):
            return int(obstore.head(self._store, key)["size"])

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) in pieces of at most 1 MiB, from one ranged GET (readers of
        lines count on that bound: read_budget.PIECE_BYTES)."""
        if end is not None and end <= start:
            return
        options: Any = {}
        if end is not None:
            options = {"range": (start, end)}
        elif start:
            if start >= self.size(key):  # S3 refuses a range past the end (416)
                return
            options = {"range": {"offset": start}}
        with _translated(key):
            result = obstore.get(self._store, key, options=options)
            # Gathered to half a piece (network reads are smaller), then cut to whole ones.
            for piece in result.stream(min_chunk_size=_PIECE // 2):
                view = memoryview(piece)
                for at in range(0, len(view), _PIECE):
                    yield bytes(view[at:at + _PIECE])

    def lines(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Lines (with their newline) of bytes [start, end); `start` must begin a line.
        One ranged GET of exactly the range; should `end` fall inside a line, that line is
        read on to its end (as the local store does)."""
        carry = b""
        for piece in self.read_range(key, start, end):
            carry += piece
            *lines, carry = carry.split(b"\n")
            for line in lines:
                yield line + b"\n"
        if carry and end is not None and end < self.size(key):
            for piece in self.read_range(key, end, None):
                head, newline, _ = piece.partition(b"\n")
                carry += head + newline
                if newline:
                    break
        if carry:
            yield carry

    def delete(self, key: str) -> None:
        with contextlib.suppress(BlobMissing), _translated(key):
            obstore.delete(self._store, key)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under a folder-like prefix ending in '/'."""
        with _translated(prefix):
            for listed in obstore.list(self._store, prefix=prefix.rstrip("/") + "/",
                                       chunk_size=_DELETE_BATCH):
                paths = [entry["path"] for entry in listed]
                if paths:
                    obstore.delete(self._store, paths)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every object's key under a folder-like prefix ('' for all)."""
        with _translated(prefix):
            for listed in obstore.list(self._store, prefix=prefix.rstrip("/") + "/"
                                       if prefix else None):
                for entry in listed:
                    yield str(entry["path"])

    def sweep_temporary(self, older_than_seconds: float = 3600.0) -> int:
        """Nothing to sweep: a failed writer aborts its multipart upload. (Uploads cut off
        by a crash are cleared by the bucket's AbortIncompleteMultipartUpload rule.)"""
        return 0


def _client_options() -> ClientConfig:
    """Timeouts, plus the client settings obstore would otherwise read from the environment
    (options given here replace the environment's, so `AWS_ALLOW_HTTP` is carried over)."""
    options: ClientConfig = {"connect_timeout": datetime.timedelta(seconds=5),
                               "timeout": datetime.timedelta(seconds=60)}
    if os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in ("1", "true", "yes"):
        options["allow_http"] = True
    return options


class _Writer:
    """What callers use of a binary file, over obstore's writable file."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return int(self._out.write(data))

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self._out.write(line)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """obstore's errors as batchd's: a missing object, or the store being unavailable."""
    try:
        yield
    except FileNotFoundError as exc:
        raise BlobMissing(f"Stored content is missing for object {key!r}.") from exc
    except (InvalidPathError, NotSupportedError, AlreadyExistsError, PreconditionError,
            NotModifiedError, UnknownConfigurationKeyError) as exc:  # batchd's own mistake
        raise ServerError(f"The object store refused a request for {key!r}: "
                          f"{_first_line(exc)}", code="storage_error") from exc
    except (PermissionDeniedError, UnauthenticatedError) as exc:
        raise ServiceUnavailable(
            "The object store refused batchd's credentials (check AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY): {_first_line(exc)}", code="storage_unavailable") from exc
    except (BaseError, OSError) as exc:  # a writer's close reports as a plain OSError
        raise ServiceUnavailable(
            f"The object store is unavailable: {_first_line(exc)}",
            code="storage_unavailable") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
