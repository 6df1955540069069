"""The blob store: immutable byte objects by key, in a local directory (`s3_blobs.py` has
the S3-compatible one).

Objects appear atomically (written to a temporary name, fsync'd, then renamed), so a reader
never sees a half-written object, and a crash leaves at most an orphan temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from batchd.errors import ServerError, ServiceUnavailable, StorageFull

_COPY = 1024 * 1024


class BlobStore(Protocol):
    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def lines(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...


class BlobMissing(ServerError):
    """A record points at a blob that is not there (deleted by hand, disk lost)."""


class LocalBlobStore:
    """Blobs as files below one directory. Keys are ours (never user filenames)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"blob key escapes the store: {key!r}")
        return path

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write a new object; it becomes visible only if the block exits cleanly."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        except OSError as exc:
            raise _storage_error(exc) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            _unlink_quietly(tmp_name)
            raise _storage_error(exc) from exc
        except BaseException:
            _unlink_quietly(tmp_name)
            raise

    def check(self) -> None:
        """The directory is there and writable (the readiness probe's check: a volume that
        went away or turned read-only)."""
        if not self._tmp.is_dir() or not os.access(self._tmp, os.W_OK | os.X_OK):
            raise ServiceUnavailable(f"the blob directory {self.root} is missing or not "
                                     "writable")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise BlobMissing(f"Stored content is missing for object {key!r}.") from exc

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise BlobMissing(f"Stored content is missing for object {key!r}.") from exc

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) in pieces of up to 1 MiB."""
        with self._open(key) as src:
            src.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                piece = src.read(_COPY if remaining is None else min(_COPY, remaining))
                if not piece:
                    return
                if remaining is not None:
                    remaining -= len(piece)
                yield piece

    def lines(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Lines (with their newline) of bytes [start, end); `start` must begin a line."""
        with self._open(key) as src:
            src.seek(start)
            position = start
            for line in src:
                if end is not None and position >= end:
                    return
                position += len(line)
                yield line

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under a folder-like prefix ending in '/'."""
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every object's key under a folder-like prefix ('' for all), in no set order."""
        folder = self.root / prefix.rstrip("/") if prefix else self.root
        if not folder.is_dir():
            return
        for path in folder.rglob("*"):
            relative = path.relative_to(self.root)
            if path.is_file() and relative.parts[0] != ".tmp":
                yield relative.as_posix()

    def sweep_temporary(self, older_than_seconds: float = 3600.0) -> int:
        """Remove temporary files that crashed writers left behind."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def _storage_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("The server's storage is full; nothing was stored.", code="storage_full")
    return ServerError(f"The server could not write to its storage ({exc.strerror}).",
                       code="storage_error")
