"""Per-request isolation, worker deaths, vanished input and storage faults."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from tests.support.harness import Harness
from tests.support.lines import batch_line


async def test_a_hung_request_times_out_is_retried_then_reported(harness: Harness) -> None:
    harness.settings.request_timeout_seconds = 0.2
    batch = await harness.run_batch([batch_line("ok-1"), batch_line("stuck", "HANG-ME"),
                                     batch_line("ok-2")])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    [error] = await harness.lines_of(batch["error_file_id"])
    assert error["custom_id"] == "stuck" and error["response"] is None
    assert error["error"]["code"] == "request_timeout"
    assert "2 attempts" in error["error"]["message"]


async def test_input_that_vanishes_mid_run_fails_the_batch_keeping_results(
    harness: Harness,
) -> None:
    file_id = await harness.upload([batch_line(f"r{i}") for i in range(4)])
    created = await harness.create_batch(file_id)
    assert await harness.worker.run_one_batch_task()
    assert await harness.worker.run_one_chunk()
    harness.blobs.delete(f"files/{file_id}")
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert batch["errors"]["data"][0]["code"] == "input_file_missing"
    output = await harness.lines_of(batch["output_file_id"])
    assert {line["custom_id"] for line in output} == {"r0", "r1"}


# A local-disk fault: the local blob store even when the suite runs on PostgreSQL + S3.
@pytest.mark.parametrize("backend", [{}])
@pytest.mark.parametrize(
    ("error", "status", "code", "says"),
    [(errno.ENOSPC, 507, "storage_full", "storage is full"),
     (errno.EROFS, 500, "storage_error", "Read-only file system")],
)
async def test_storage_faults_on_upload_are_clear_and_reads_go_on(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, error: int, status: int, code: str,
    says: str,
) -> None:
    kept = await harness.upload([batch_line("a")])

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(tempfile, "mkstemp", failing)
    response = await harness.client.post("/v1/files", files={"file": ("b.jsonl", b"{}\n")},
                                         data={"purpose": "batch"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert says in response.json()["error"]["message"]
    listed = (await harness.client.get("/v1/files")).json()
    assert [f["id"] for f in listed["data"]] == [kept]  # no record of the failed upload
    assert (await harness.client.get(f"/v1/files/{kept}/content")).status_code == 200


async def test_chunks_are_shared_fairly_between_owners_then_by_deadline(
    harness: Harness,
) -> None:
    store, settings = harness.worker.ctx.store, harness.settings
    services = harness.services
    _, secret = await services.keys.create(name="small-owner")
    big = await harness.create_batch(await harness.upload(
        [batch_line(f"big-{i}") for i in range(8)]), completion_window="1h")
    harness.client.headers["Authorization"] = f"Bearer {secret}"
    small = await harness.create_batch(await harness.upload(
        [batch_line(f"small-{i}") for i in range(4)]), completion_window="72h")
    while await harness.worker.run_one_batch_task():
        pass
    claimed = []
    for n in range(4):
        claim = await store.claim_chunk(worker=f"w{n}", now=harness.clock.now(),
                                        lease_seconds=settings.lease_seconds)
        assert claim is not None
        claimed.append(claim[0].batch_id)
    # The urgent batch goes first, but the other owner is not made to wait for all of it.
    assert claimed == [big["id"], small["id"], big["id"], small["id"]]
