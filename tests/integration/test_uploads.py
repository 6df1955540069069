"""The Uploads API: parts stored as they come, joined in the given order into a File, checked
against the declared size and the md5; cancel and expiry remove the parts."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from batchd.files import display_name
from batchd.uploads import UploadService
from tests.support.harness import Harness, Tenants
from tests.support.lines import batch_line


async def start(client: httpx.AsyncClient, size: int, *, filename: str = "big.jsonl",
                purpose: str = "batch") -> dict[str, object]:
    response = await client.post("/v1/uploads", json={
        "bytes": size, "filename": filename, "mime_type": "application/jsonl",
        "purpose": purpose})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def part(client: httpx.AsyncClient, upload_id: object, data: bytes) -> str:
    response = await client.post(f"/v1/uploads/{upload_id}/parts",
                                 files={"data": ("blob", data)})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "upload.part"
    return str(response.json()["id"])


async def test_parts_join_in_order_into_a_file_a_batch_can_use(harness: Harness) -> None:
    lines = [f"{batch_line(f'r{i}')}\n".encode() for i in range(6)]
    pieces = [b"".join(lines[:2]), b"".join(lines[2:5]), lines[5]]
    data = b"".join(pieces)
    upload = await start(harness.client, len(data))
    assert upload["status"] == "pending" and upload["expires_at"] == upload["created_at"] + 3600
    ids = [await part(harness.client, upload["id"], piece) for piece in pieces]
    done = await harness.client.post(f"/v1/uploads/{upload['id']}/complete", json={
        "part_ids": ids, "md5": hashlib.md5(data).hexdigest()})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["file"]["bytes"] == len(data)
    assert body["file"]["filename"] == "big.jsonl" and body["file"]["purpose"] == "batch"
    content = await harness.client.get(f"/v1/files/{body['file']['id']}/content")
    assert content.content == data
    assert harness.stored_keys("uploads/") == []  # the parts are gone
    batch = await harness.create_batch(body["file"]["id"])
    await harness.worker.drain()
    assert (await harness.batch(batch["id"]))["request_counts"]["completed"] == 6


async def test_wrong_md5_order_missing_parts_and_sizes_are_clear_400s(harness: Harness) -> None:
    data = b"".join(f"{batch_line(f'r{i}')}\n".encode() for i in range(4))
    half = len(data) // 2
    upload = await start(harness.client, len(data))
    first, second = (await part(harness.client, upload["id"], data[:half]),
                     await part(harness.client, upload["id"], data[half:]))
    url = f"/v1/uploads/{upload['id']}/complete"
    cases = [
        ({"part_ids": [first, second], "md5": "0" * 32}, "md5"),
        ({"part_ids": [second, first], "md5": hashlib.md5(data).hexdigest()}, "md5"),
        ({"part_ids": [first]}, "part_ids"),  # missing a part: the sizes do not add up
        ({"part_ids": [first, "part_nope"]}, "part_ids[1]"),
        ({"part_ids": [first, first]}, "part_ids"),
    ]
    for body, param in cases:
        response = await harness.client.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    assert (await harness.client.get("/v1/files")).json()["data"] == []  # nothing half-made
    ok = await harness.client.post(url, json={"part_ids": [first, second]})
    assert ok.status_code == 200 and ok.json()["status"] == "completed"
    again = await harness.client.post(url, json={"part_ids": [first, second]})
    assert again.status_code == 400 and "completed" in again.json()["error"]["message"]


async def test_a_cancelled_upload_takes_nothing_more(harness: Harness) -> None:
    upload = await start(harness.client, 10, filename="notes.txt", purpose="user_data")
    await part(harness.client, upload["id"], b"0123456789")
    cancelled = await harness.client.post(f"/v1/uploads/{upload['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert harness.stored_keys("uploads/") == []
    refused = await harness.client.post(f"/v1/uploads/{upload['id']}/parts",
                                        files={"data": ("blob", b"x")})
    assert refused.status_code == 400 and "cancelled" in refused.json()["error"]["message"]
    assert harness.stored_keys("uploads/") == []


async def test_an_upload_expires_after_an_hour_and_its_parts_go(harness: Harness) -> None:
    upload = await start(harness.client, 4, filename="n.txt", purpose="user_data")
    await part(harness.client, upload["id"], b"abcd")
    harness.clock.advance(3601)
    await harness.worker.drain()
    assert harness.stored_keys("uploads/") == []
    late = await harness.client.post(f"/v1/uploads/{upload['id']}/complete",
                                     json={"part_ids": ["part_x"]})
    assert late.status_code == 400 and "expired" in late.json()["error"]["message"]


async def test_limits_purposes_and_owners(harness: Harness, tenants: Tenants) -> None:
    too_big = await harness.client.post("/v1/uploads", json={
        "bytes": harness.settings.max_batch_file_bytes + 1, "filename": "a.jsonl",
        "mime_type": "application/jsonl", "purpose": "batch"})
    assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "bytes"
    for body, param in (({"purpose": "nope"}, "purpose"),
                        ({"filename": "a.csv"}, "filename")):
        response = await harness.client.post("/v1/uploads", json={
            "bytes": 1, "filename": "a.jsonl", "mime_type": "x", "purpose": "batch", **body})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    upload = await start(harness.client, 1)
    bob = await tenants.client("bob")
    response = await bob.post(f"/v1/uploads/{upload['id']}/parts", files={"data": ("b", b"x")})
    assert response.status_code == 404


def _uploads(harness: Harness) -> UploadService:
    return harness.services.uploads


async def test_complete_and_cancel_are_ordered_one_wins_the_other_is_a_400(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel (or a part) arriving while a completion reads the parts used to delete them
    under it: the completion then failed with a 500 "Stored content is missing"."""
    data = b"".join(f"{batch_line(f'r{i}')}\n".encode() for i in range(4))
    upload = await start(harness.client, len(data))
    ids = [await part(harness.client, upload["id"], data[:50]),
           await part(harness.client, upload["id"], data[50:])]
    blobs = _uploads(harness).blobs
    reading, go_on = threading.Event(), threading.Event()
    read_range = blobs.read_range

    def held_read(key: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        reading.set()  # the completion is joining the parts now
        go_on.wait(30)
        yield from read_range(key, *args, **kwargs)

    monkeypatch.setattr(blobs, "read_range", held_read)
    completing = asyncio.create_task(harness.client.post(
        f"/v1/uploads/{upload['id']}/complete", json={"part_ids": ids}))
    try:
        assert await asyncio.to_thread(reading.wait, 30)
        cancel = await harness.client.post(f"/v1/uploads/{upload['id']}/cancel")
        late_part = await harness.client.post(f"/v1/uploads/{upload['id']}/parts",
                                              files={"data": ("blob", b"x")})
        again = await harness.client.post(f"/v1/uploads/{upload['id']}/complete",
                                          json={"part_ids": ids})
    finally:
        go_on.set()
    for refused in (cancel, late_part, again):
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_upload_state" and error["param"] == "upload_id"
        assert "being completed" in error["message"]
    done = await completing
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    content = await harness.client.get(f"/v1/files/{done.json()['file']['id']}/content")
    assert content.content == data
    assert harness.stored_keys("uploads/") == []
    # And the other way round: once cancelled, a completion is the 400.
    second = await start(harness.client, 1)
    one = await part(harness.client, second["id"], b"x")
    assert (await harness.client.post(f"/v1/uploads/{second['id']}/cancel")).status_code == 200
    refused = await harness.client.post(f"/v1/uploads/{second['id']}/complete",
                                        json={"part_ids": [one]})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_upload_state"


async def test_a_failed_completion_gives_the_upload_back(harness: Harness) -> None:
    upload = await start(harness.client, 3, filename="n.txt", purpose="user_data")
    one = await part(harness.client, upload["id"], b"abc")
    wrong = await harness.client.post(f"/v1/uploads/{upload['id']}/complete",
                                      json={"part_ids": [one], "md5": "0" * 32})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "md5"
    assert (await harness.client.post(f"/v1/uploads/{upload['id']}/cancel")).json()[
        "status"] == "cancelled"
    assert harness.stored_keys("uploads/") == []


async def test_an_abandoned_completion_is_expired_with_its_parts(harness: Harness) -> None:
    """A process that died mid-completion leaves its claim: the expiry takes it back once
    it is long overdue, so the parts do not stay forever."""
    upload = await start(harness.client, 3, filename="n.txt", purpose="user_data")
    await part(harness.client, upload["id"], b"abc")
    store = _uploads(harness).store
    assert await store.claim_upload(str(upload["id"]), now=int(harness.clock.now()))
    harness.clock.advance(3601)
    await harness.worker.drain()
    assert harness.stored_keys("uploads/") != []  # a slow completion may still be reading
    harness.clock.advance(3600)
    await harness.worker.drain()
    assert harness.stored_keys("uploads/") == []
    refused = await harness.client.post(f"/v1/uploads/{upload['id']}/cancel")
    assert refused.status_code == 400 and "expired" in refused.json()["error"]["message"]


async def multipart_body(data_pieces: Iterator[bytes], sent: list[int]
                         ) -> AsyncIterator[bytes]:
    yield (b'--b0undary\r\nContent-Disposition: form-data; name="data"; filename="p"\r\n'
           b"Content-Type: application/octet-stream\r\n\r\n")
    for piece in data_pieces:
        sent.append(len(piece))
        yield piece
    yield b"\r\n--b0undary--\r\n"


async def test_parts_never_hold_more_than_the_upload_declared(harness: Harness) -> None:
    """301 MB used to fit under an upload declared as 3 bytes: every part is now refused the
    moment the parts would pass `bytes`, and nothing of it is stored."""
    upload = await start(harness.client, 10, filename="n.txt", purpose="user_data")
    url = f"/v1/uploads/{upload['id']}/parts"
    await part(harness.client, upload["id"], b"123456")
    too_much = await harness.client.post(url, files={"data": ("blob", b"12345")})
    assert too_much.status_code == 400, too_much.text
    error = too_much.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "data"
    assert "created for 10 bytes" in error["message"] and "at most 4 bytes" in error["message"]
    assert len(harness.stored_keys("uploads/")) == 1
    # A big body is refused as soon as it passes the room left, without reading it all.
    sent: list[int] = []
    pieces = (b"z" * 65536 for _ in range(160))  # 10 MiB
    flood = await harness.client.post(
        url, content=multipart_body(pieces, sent),
        headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert flood.status_code == 400 and flood.json()["error"]["param"] == "data"
    assert sum(sent) < 1024 * 1024, sum(sent)
    assert len(harness.stored_keys("uploads/")) == 1
    last = await part(harness.client, upload["id"], b"7890")
    full = await harness.client.post(url, files={"data": ("blob", b"x")})
    assert full.status_code == 400 and "at most 0 bytes" in full.json()["error"]["message"]
    assert last and len(harness.stored_keys("uploads/")) == 2


async def test_parts_sent_side_by_side_cannot_pass_the_declared_size_together(
    harness: Harness,
) -> None:
    upload = await start(harness.client, 10, filename="n.txt", purpose="user_data")
    answers = await asyncio.gather(*(
        harness.client.post(f"/v1/uploads/{upload['id']}/parts",
                            files={"data": ("blob", b"%d" % n * 6)}) for n in range(4)))
    assert sorted(a.status_code for a in answers) == [200, 400, 400, 400]
    assert len(harness.stored_keys("uploads/")) == 1


async def test_parts_per_upload_and_pending_uploads_per_owner_are_capped(
    harness: Harness, tenants: Tenants, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _uploads(harness).settings
    monkeypatch.setattr(settings, "max_upload_parts", 2)
    monkeypatch.setattr(settings, "max_pending_uploads", 2)
    upload = await start(harness.client, 10, filename="n.txt", purpose="user_data")
    await part(harness.client, upload["id"], b"")  # empty parts count too
    await part(harness.client, upload["id"], b"a")
    third = await harness.client.post(f"/v1/uploads/{upload['id']}/parts",
                                      files={"data": ("blob", b"b")})
    assert third.status_code == 400 and third.json()["error"]["code"] == "too_many_parts"
    assert len(harness.stored_keys("uploads/")) == 2

    second = await start(harness.client, 1, filename="n.txt", purpose="user_data")
    refused = await harness.client.post("/v1/uploads", json={
        "bytes": 1, "filename": "n.txt", "mime_type": "text/plain", "purpose": "user_data"})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_pending_uploads"
    assert refused.headers["x-should-retry"] == "false"
    other = await tenants.client("other", owner="someone-else")  # a limit per owner
    await start(other, 1, filename="n.txt", purpose="user_data")
    await harness.client.post(f"/v1/uploads/{second['id']}/cancel")
    await start(harness.client, 1, filename="n.txt", purpose="user_data")
    harness.clock.advance(3601)  # expired uploads do not count, swept or not
    await start(harness.client, 1, filename="n.txt", purpose="user_data")


async def test_upload_file_names_are_cleaned_as_files_are(harness: Harness) -> None:
    # (No C0 control but ESC here: httpx percent-encodes the others in a multipart name.)
    raw = "evil\x1b]0;owned\x1b[2J\u202e\x9b" + "n" * 900 + ".jsonl"
    upload = await start(harness.client, 1, filename=raw)
    stored = str(upload["filename"])
    assert stored == display_name(raw) and stored.isprintable() and len(stored) == 255
    assert stored.startswith("evil]0;owned[2J") and stored.endswith(".jsonl")
    one = await part(harness.client, upload["id"], b"\n")
    done = await harness.client.post(f"/v1/uploads/{upload['id']}/complete",
                                     json={"part_ids": [one]})
    assert done.json()["file"]["filename"] == stored
    direct = await harness.client.post("/v1/files", files={"file": (raw, b"\n")},
                                       data={"purpose": "batch"})
    assert direct.json()["filename"] == stored
    only_controls = await harness.client.post("/v1/uploads", json={
        "bytes": 1, "filename": "\x1b\x07", "mime_type": "x", "purpose": "user_data"})
    assert only_controls.json()["filename"] == "upload"
