"""The Uploads API: parts stored as they come, joined in the given order into a File, checked
against the declared size and the md5; cancel and expiry remove the parts."""

from __future__ import annotations

import hashlib

import httpx

from tests.conftest import Harness, Tenants, batch_line


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
