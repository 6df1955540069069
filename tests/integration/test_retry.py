"""POST /v1/batches/{id}/retry (a batchd extension): a new batch of exactly the lines that
failed, were cancelled or expired, validated and limited like any other."""

from __future__ import annotations

from tests.support.harness import Harness, Tenants
from tests.support.lines import batch_line


async def test_a_cancelled_batch_is_retried_and_the_retry_completes(harness: Harness) -> None:
    file_id = await harness.upload([batch_line(f"r{i}", f"question {i}") for i in range(6)])
    original = await harness.create_batch(file_id, metadata={"project": "evals"})
    early = await harness.client.post(f"/v1/batches/{original['id']}/retry")
    assert early.status_code == 409 and early.json()["error"]["code"] == "batch_not_finished"
    assert await harness.worker.run_one_batch_task()  # validated: in progress, nothing ran
    await harness.client.post(f"/v1/batches/{original['id']}/cancel")
    await harness.worker.drain()
    assert (await harness.batch(original["id"]))["status"] == "cancelled"

    response = await harness.client.post(f"/v1/batches/{original['id']}/retry")
    assert response.status_code == 200, response.text
    retry = response.json()
    assert retry["status"] == "validating" and retry["id"] != original["id"]
    assert retry["metadata"] == {"project": "evals", "retry_of": original["id"]}
    assert retry["endpoint"] == original["endpoint"]
    assert retry["completion_window"] == original["completion_window"]
    content = (await harness.client.get(f"/v1/files/{retry['input_file_id']}/content")).text
    assert content == "".join(batch_line(f"r{i}", f"question {i}") + "\n" for i in range(6))
    await harness.worker.drain()
    done = await harness.batch(retry["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0}


async def test_only_the_failed_lines_are_sent_again(harness: Harness) -> None:
    lines = [batch_line("ok-1"), batch_line("bad-1", "FAIL-ME"), batch_line("ok-2"),
             batch_line("bad-2", "FAIL-ME please")]
    original = await harness.run_batch(lines)
    assert original["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    retry = (await harness.client.post(f"/v1/batches/{original['id']}/retry")).json()
    content = (await harness.client.get(f"/v1/files/{retry['input_file_id']}/content")).text
    assert content == lines[1] + "\n" + lines[3] + "\n"


async def test_nothing_to_retry_is_a_clear_400(harness: Harness) -> None:
    clean = await harness.run_batch([batch_line("a"), batch_line("b")])
    response = await harness.client.post(f"/v1/batches/{clean['id']}/retry")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "nothing_to_retry"
    invalid = await harness.run_batch([batch_line("a"), "{broken"])
    assert invalid["status"] == "failed"
    response = await harness.client.post(f"/v1/batches/{invalid['id']}/retry")
    assert response.status_code == 400 and "failed validation" in response.json()["error"][
        "message"]


async def test_another_owner_cannot_retry_a_batch(harness: Harness, tenants: Tenants) -> None:
    alice = await tenants.client("alice")
    upload = await alice.post("/v1/files", files={"file": ("a.jsonl", batch_line("x") + "\n")},
                              data={"purpose": "batch"})
    created = await alice.post("/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    await alice.post(f"/v1/batches/{created.json()['id']}/cancel")
    await harness.worker.drain()  # cancelled while validating: retried whole
    bob = await tenants.client("bob")
    assert (await bob.post(f"/v1/batches/{created.json()['id']}/retry")).status_code == 404
    retried = await alice.post(f"/v1/batches/{created.json()['id']}/retry")
    assert retried.status_code == 200 and retried.json()["metadata"]["retry_of"]


async def test_a_batch_cancelled_while_validating_is_retried_whole(harness: Harness) -> None:
    file_id = await harness.upload([batch_line(f"v{i}") for i in range(3)])
    original = await harness.create_batch(file_id)
    await harness.client.post(f"/v1/batches/{original['id']}/cancel")
    await harness.worker.drain()
    retry = (await harness.client.post(f"/v1/batches/{original['id']}/retry")).json()
    assert retry["input_file_id"] == file_id  # every line: the same file
    await harness.worker.drain()
    assert (await harness.batch(retry["id"]))["request_counts"]["completed"] == 3
