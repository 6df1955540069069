from __future__ import annotations

from tests.support.harness import Harness
from tests.support.lines import batch_line


async def test_upload_retrieve_content_roundtrip(harness: Harness) -> None:
    data = ("\n".join(batch_line(f"r{i}") for i in range(3)) + "\n").encode()
    response = await harness.client.post("/v1/files", files={"file": ("my.jsonl", data)},
                                         data={"purpose": "batch"})
    assert response.status_code == 200
    meta = response.json()
    assert meta["object"] == "file" and meta["id"].startswith("file-")
    assert meta["bytes"] == len(data) and meta["filename"] == "my.jsonl"
    assert meta["purpose"] == "batch" and meta["status"] == "processed"
    assert meta["expires_at"] == meta["created_at"] + 30 * 24 * 3600
    assert (await harness.client.get(f"/v1/files/{meta['id']}")).json() == meta
    content = await harness.client.get(f"/v1/files/{meta['id']}/content",
                                       headers={"Accept": "application/binary"})
    assert content.status_code == 200 and content.content == data


async def test_batch_files_must_be_jsonl(harness: Harness) -> None:
    response = await harness.client.post("/v1/files", files={"file": ("data.csv", b"a,b\n")},
                                         data={"purpose": "batch"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Invalid file format for Batch API. Must be .jsonl")


async def test_bad_purpose_and_missing_parts(harness: Harness) -> None:
    bad = await harness.client.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")},
                                    data={"purpose": "nonsense"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "purpose"
    missing = await harness.client.post("/v1/files", data={"purpose": "batch"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


async def test_too_large_upload_is_refused_and_leaves_nothing(harness: Harness) -> None:
    harness.settings.max_batch_file_bytes = 100
    response = await harness.client.post("/v1/files", files={"file": ("a.jsonl", b"x" * 101)},
                                         data={"purpose": "batch"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("File is too large.")
    assert (await harness.client.get("/v1/files")).json()["data"] == []
    assert harness.stored_keys() == []


async def test_hostile_filenames_are_labels_not_paths(harness: Harness) -> None:
    for name in ("../../etc/passwd.jsonl", "a\x00b.jsonl", "x" * 10_000 + ".jsonl"):
        response = await harness.client.post("/v1/files", files={"file": (name, b"{}\n")},
                                             data={"purpose": "batch"})
        assert response.status_code in (200, 400), response.text
    assert not (harness.settings.data_dir.parent / "etc").exists()


async def test_list_files_filters_orders_and_pages(harness: Harness) -> None:
    ids = [await harness.upload([batch_line("a")], name=f"f{i}.jsonl") for i in range(3)]
    other = await harness.upload(b"hello", name="notes.txt", purpose="user_data")
    listed = (await harness.client.get("/v1/files", params={"purpose": "batch"})).json()
    assert [f["id"] for f in listed["data"]] == ids[::-1]
    asc = (await harness.client.get("/v1/files", params={"order": "asc", "limit": 2})).json()
    assert [f["id"] for f in asc["data"]] == ids[:2] and asc["has_more"] is True
    nxt = (await harness.client.get("/v1/files", params={"order": "asc",
                                                         "after": asc["last_id"]})).json()
    assert [f["id"] for f in nxt["data"]] == [ids[2], other]


async def test_delete_hides_the_file_everywhere(harness: Harness) -> None:
    file_id = await harness.upload([batch_line("a")])
    deleted = await harness.client.delete(f"/v1/files/{file_id}")
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    for response in (await harness.client.get(f"/v1/files/{file_id}"),
                     await harness.client.get(f"/v1/files/{file_id}/content"),
                     await harness.client.delete(f"/v1/files/{file_id}")):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such File object: {file_id}"


async def test_deleting_the_input_of_a_running_batch_does_not_break_it(
    harness: Harness,
) -> None:
    file_id = await harness.upload([batch_line(f"r{i}") for i in range(4)])
    created = await harness.create_batch(file_id)
    assert await harness.worker.run_one_batch_task()
    assert (await harness.client.delete(f"/v1/files/{file_id}")).status_code == 200
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 4


async def test_missing_blob_is_reported_not_crashed_on(harness: Harness) -> None:
    file_id = await harness.upload([batch_line("a")])
    harness.blobs.delete(f"files/{file_id}")
    response = await harness.client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 500
    assert "missing" in response.json()["error"]["message"]


async def test_auth_is_required_and_bad_keys_get_401(harness: Harness) -> None:
    async with harness.client_with(None) as anon:
        for headers in ({}, {"Authorization": "Bearer wrong-key-123456"},
                        {"Authorization": "Basic abc"}):
            response = await anon.get("/v1/files", headers=headers)
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
        assert (await anon.get("/healthz")).status_code == 200


async def test_files_expire_at_their_expires_at(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/files", files={"file": ("notes.txt", b"hello")},
        data={"purpose": "user_data", "expires_after[anchor]": "created_at",
              "expires_after[seconds]": "3600"})
    meta = response.json()
    assert meta["expires_at"] == meta["created_at"] + 3600
    lasting = await harness.upload(b"keep", name="keep.txt", purpose="user_data")
    harness.clock.advance(3601)
    await harness.worker.drain()
    assert (await harness.client.get(f"/v1/files/{meta['id']}")).status_code == 404
    assert (await harness.client.get(f"/v1/files/{lasting}")).status_code == 200
    assert not harness.blobs.exists(f"files/{meta['id']}")


def _multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> tuple[
        dict[str, str], bytes]:
    """A multipart body with its parts in exactly this order (httpx puts fields first)."""
    body = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


async def test_purpose_after_a_large_file_is_read_and_the_file_kept_whole(
        harness: Harness) -> None:
    # curl sends fields in the order given; the file arrives before its purpose and spans
    # several of the streamed pieces (written in 1 MiB steps).
    data = b"".join(f'{{"n": {i}}}\n'.encode() for i in range(300_000))
    headers, body = _multipart(("file", "big.jsonl", data), ("purpose", None, b"batch"))
    response = await harness.client.post("/v1/files", headers=headers, content=body)
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["purpose"] == "batch" and meta["bytes"] == len(data)
    content = await harness.client.get(f"/v1/files/{meta['id']}/content")
    assert content.content == data


async def test_the_batch_limit_applies_when_the_purpose_comes_last(harness: Harness) -> None:
    harness.settings.max_batch_file_bytes = 100
    headers, body = _multipart(("file", "a.jsonl", b"x" * 101), ("purpose", None, b"batch"))
    response = await harness.client.post("/v1/files", headers=headers, content=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "file_too_large"
    # The same bytes for another purpose are within the general limit.
    headers, body = _multipart(("file", "a.txt", b"x" * 101), ("purpose", None, b"user_data"))
    assert (await harness.client.post("/v1/files", headers=headers,
                                      content=body)).status_code == 200
    assert len((await harness.client.get("/v1/files")).json()["data"]) == 1
    assert len(harness.stored_keys()) == 1


async def test_malformed_uploads_get_clear_errors_and_leave_nothing(harness: Harness) -> None:
    two_files = _multipart(("purpose", None, b"batch"), ("file", "a.jsonl", b"{}\n"),
                           ("file", "b.jsonl", b"{}\n"))
    no_purpose = _multipart(("file", "a.jsonl", b"{}\n"))
    bad_seconds = _multipart(("purpose", None, b"user_data"), ("file", "a.txt", b"x"),
                             ("expires_after[anchor]", None, b"created_at"),
                             ("expires_after[seconds]", None, b"soon"))
    cases = [
        (two_files, "invalid_request", "file"),
        (no_purpose, "missing_required_parameter", "purpose"),
        (bad_seconds, "invalid_type", "expires_after.seconds"),
        (({"Content-Type": "application/json"}, b'{"purpose": "batch"}'),
         "missing_required_parameter", "file"),
        (({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nnot a header\r\n"),
         None, "file"),
    ]
    for (headers, body), code, param in cases:
        response = await harness.client.post("/v1/files", headers=headers, content=body)
        assert response.status_code == 400, (response.status_code, response.text)
        error = response.json()["error"]
        assert error["param"] == param, error
        assert code is None or error["code"] == code, error
    assert (await harness.client.get("/v1/files")).json()["data"] == []
    assert harness.stored_keys() == []
