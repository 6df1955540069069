"""One contract, two blob stores: the same cases on local disk and on a real S3 server."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchd.errors import ServiceUnavailable
from batchd.store.blobs import BlobMissing, BlobStore, LocalBlobStore
from batchd.store.s3_blobs import S3BlobStore
from tests.support.backends import S3Server
from tests.support.ports import free_port


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    yield S3BlobStore(f"s3://{server.bucket}/contract-{uuid.uuid4().hex[:8]}")


def put(blobs: BlobStore, key: str, data: bytes) -> None:
    with blobs.writer(key) as out:
        out.write(data)


def test_an_object_reads_back_whole_and_by_range(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one read piece
    put(blobs, "files/a", data)
    assert blobs.exists("files/a") and blobs.size("files/a") == len(data)
    assert b"".join(blobs.read_range("files/a")) == data
    assert b"".join(blobs.read_range("files/a", 1000, 1_500_000)) == data[1000:1_500_000]
    assert b"".join(blobs.read_range("files/a", 2_000_000)) == data[2_000_000:]
    assert b"".join(blobs.read_range("files/a", 5, 5)) == b""


def test_lines_of_a_byte_range(blobs: BlobStore) -> None:
    lines = [f'{{"n": {n}}}\n'.encode() for n in range(1000)]
    put(blobs, "files/l", b"".join(lines) + b'{"last": true}')
    start = sum(map(len, lines[:10]))
    end = sum(map(len, lines[:20]))
    assert list(blobs.lines("files/l", start, end)) == lines[10:20]
    # A range ending inside a line yields that line whole.
    assert list(blobs.lines("files/l", start, end + 3)) == lines[10:21]
    assert list(blobs.lines("files/l"))[-1] == b'{"last": true}'
    assert len(list(blobs.lines("files/l", end))) == 1000 - 20 + 1


def test_a_failed_writer_leaves_nothing(blobs: BlobStore) -> None:
    big = os.urandom(6 * 1024 * 1024)  # past one multipart part on S3
    with pytest.raises(RuntimeError), blobs.writer("batches/b/parts/p1") as out:
        out.write(big)
        out.write(big)
        raise RuntimeError("the worker died mid-write")
    assert not blobs.exists("batches/b/parts/p1")
    assert list(blobs.keys("batches/")) == []


def test_a_streamed_write_of_many_pieces_is_one_object(blobs: BlobStore) -> None:
    digest = hashlib.sha256()
    with blobs.writer("batches/b/output.jsonl") as out:
        for n in range(40):  # 20 MiB in 512 KiB pieces: several multipart parts on S3
            piece = bytes([n]) * (512 * 1024)
            digest.update(piece)
            out.write(piece)
    assert blobs.size("batches/b/output.jsonl") == 20 * 1024 * 1024
    read = hashlib.sha256()
    for piece in blobs.read_range("batches/b/output.jsonl"):
        read.update(piece)
    assert read.digest() == digest.digest()


def test_prefix_delete_removes_only_that_prefix(blobs: BlobStore) -> None:
    for n in range(7):
        put(blobs, f"batches/one/parts/{n}", b"x")
    put(blobs, "batches/one-more/parts/0", b"y")
    put(blobs, "files/keep", b"z")
    blobs.delete_prefix("batches/one/")
    assert sorted(blobs.keys()) == ["batches/one-more/parts/0", "files/keep"]
    blobs.delete("files/keep")
    blobs.delete("files/keep")  # deleting twice is fine
    assert sorted(blobs.keys()) == ["batches/one-more/parts/0"]


def test_a_missing_object_is_reported_as_missing(blobs: BlobStore) -> None:
    assert not blobs.exists("files/none")
    with pytest.raises(BlobMissing):
        blobs.size("files/none")
    with pytest.raises(BlobMissing):
        list(blobs.read_range("files/none"))


def test_an_unreachable_or_refusing_s3_is_unavailable_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, s3_server: S3Server,
) -> None:
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ServiceUnavailable, match="credentials"):
        S3BlobStore(f"s3://{s3_server.bucket}/x").check()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = S3BlobStore(f"s3://{s3_server.bucket}/x")
    with pytest.raises(ServiceUnavailable, match="unavailable"):
        store.check()
    with pytest.raises(ServiceUnavailable):
        put(store, "files/a", b"x")
