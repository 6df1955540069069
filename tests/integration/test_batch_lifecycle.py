from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from batchd.app import create_app
from batchd.settings import Settings
from tests.support.harness import API_KEY, Harness
from tests.support.lines import ENDPOINT, batch_line


async def test_a_batch_runs_to_completed_with_one_output_line_per_request(
    harness: Harness,
) -> None:
    lines = [batch_line(f"req-{i}", f"question {i}") for i in range(5)]
    file_id = await harness.upload(lines)
    created = await harness.create_batch(file_id, metadata={"job": "nightly"})
    assert created["status"] == "validating"
    assert created["expires_at"] == created["created_at"] + 24 * 3600
    assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert created["metadata"] == {"job": "nightly"}

    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert batch["model"] == "instant-model"
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[stamp] is not None
    assert batch["error_file_id"] is None
    assert batch["usage"]["output_tokens"] > 0
    assert batch["usage"]["total_tokens"] == (batch["usage"]["input_tokens"]
                                              + batch["usage"]["output_tokens"])

    output = await harness.lines_of(batch["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == [f"req-{i}" for i in range(5)]
    first = next(line for line in output if line["custom_id"] == "req-3")
    assert first["id"].startswith("batch_req_")
    assert first["error"] is None
    response = first["response"]
    assert response["status_code"] == 200 and response["request_id"]
    body = response["body"]
    assert body["object"] == "chat.completion" and body["model"] == "instant-model"
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": "echo: question 3", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3

    meta = (await harness.client.get(f"/v1/files/{batch['output_file_id']}")).json()
    assert meta["purpose"] == "batch_output" and meta["object"] == "file"


async def test_results_report_the_model_name_asked_for(harness: Harness) -> None:
    batch = await harness.run_batch([batch_line("a", model="org/instant-alias"),
                                     batch_line("b", model="org/second-alias")])
    assert batch["status"] == "completed" and batch["model"] is None
    models = {line["custom_id"]: line["response"]["body"]["model"]
              for line in await harness.lines_of(batch["output_file_id"])}
    assert models == {"a": "org/instant-alias", "b": "org/second-alias"}


async def test_a_request_the_engine_rejects_is_an_error_line_not_a_dead_batch(
    harness: Harness,
) -> None:
    batch = await harness.run_batch([
        batch_line("good"),
        batch_line("engine-fails", "please FAIL-ME now"),
        batch_line("bad-param", temperature=7),
    ])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = {line["custom_id"]: line for line in await harness.lines_of(batch["error_file_id"])}
    assert errors["engine-fails"]["response"]["status_code"] == 500
    assert errors["bad-param"]["response"]["status_code"] == 400
    assert errors["bad-param"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["bad-param"]["error"] is None


async def test_bad_lines_fail_the_batch_with_every_line_listed(harness: Harness) -> None:
    batch = await harness.run_batch([batch_line("a"), "{nope", batch_line("a"),
                                     batch_line("c", model="missing-model")])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    errors = batch["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [
        ("invalid_json_line", 2), ("duplicate_custom_id", 3), ("model_not_found", 4)]
    assert errors[2]["param"] == "body.model"
    assert batch["output_file_id"] is None and batch["error_file_id"] is None


async def test_unknown_input_file_fails_the_batch(harness: Harness) -> None:
    batch = await harness.create_batch("file-doesnotexist")
    await harness.worker.drain()
    batch = await harness.batch(batch["id"])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == "invalid_request"
    assert "file-doesnotexist" in batch["errors"]["data"][0]["message"]


async def test_input_file_with_wrong_purpose_fails_the_batch(harness: Harness) -> None:
    file_id = await harness.upload([batch_line("a")], purpose="user_data")
    batch = await harness.create_batch(file_id)
    await harness.worker.drain()
    batch = await harness.batch(batch["id"])
    assert batch["status"] == "failed"
    assert "purpose" in batch["errors"]["data"][0]["message"]


async def test_cancel_keeps_finished_results_and_reports_the_rest(harness: Harness) -> None:
    lines = [batch_line(f"r{i}") for i in range(6)]
    created = await harness.create_batch(await harness.upload(lines))
    assert await harness.worker.run_one_batch_task()  # validation
    assert await harness.worker.run_one_chunk()  # the first chunk of two requests
    cancelled = (await harness.client.post(f"/v1/batches/{created['id']}/cancel")).json()
    assert cancelled["status"] == "cancelling" and cancelled["cancelling_at"] is not None
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
    assert batch["request_counts"] == {"total": 6, "completed": 2, "failed": 4}
    output = await harness.lines_of(batch["output_file_id"])
    errors = await harness.lines_of(batch["error_file_id"])
    assert {line["custom_id"] for line in output} == {"r0", "r1"}
    assert {line["custom_id"] for line in errors} == {"r2", "r3", "r4", "r5"}
    assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled"
               for line in errors)
    # Cancelling again is allowed and changes nothing.
    again = await harness.client.post(f"/v1/batches/{created['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_cancel_while_validating_lists_every_request_as_cancelled(
    harness: Harness,
) -> None:
    lines = [batch_line(f"r{i}") for i in range(5)]
    created = await harness.create_batch(await harness.upload(lines))
    await harness.client.post(f"/v1/batches/{created['id']}/cancel")
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "cancelled" and batch["output_file_id"] is None
    errors = await harness.lines_of(batch["error_file_id"])
    assert [line["custom_id"] for line in errors] == [f"r{i}" for i in range(5)]
    assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled"
               for line in errors)
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 5}


async def test_cancel_after_validation_read_the_file_but_before_it_started(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cancel lands while validation reads the file: its result is dropped (the batch
    never starts) and the requests are listed all the same."""
    created = await harness.create_batch(await harness.upload(
        [batch_line(f"r{i}") for i in range(3)]))
    store = harness.worker.ctx.store
    start = store.start_batch

    async def cancelled_first(*args: Any, **kwargs: Any) -> bool:
        await harness.client.post(f"/v1/batches/{created['id']}/cancel")
        return await start(*args, **kwargs)

    monkeypatch.setattr(store, "start_batch", cancelled_first)
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "cancelled"
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 3}
    errors = await harness.lines_of(batch["error_file_id"])
    assert {line["custom_id"] for line in errors} == {"r0", "r1", "r2"}


async def test_expiry_while_validating_lists_every_request_as_expired(
    harness: Harness,
) -> None:
    created = await harness.create_batch(await harness.upload(
        [batch_line("a"), batch_line("b")]), completion_window="1h")
    harness.clock.advance(3601)
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "expired"
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    errors = await harness.lines_of(batch["error_file_id"])
    assert {(e["custom_id"], e["error"]["code"]) for e in errors} == {
        ("a", "batch_expired"), ("b", "batch_expired")}


async def test_cancel_while_validating_names_only_the_lines_it_can_read(
    harness: Harness,
) -> None:
    """Lines without a readable custom_id name no request; a repeat is listed once. An input
    with none at all ends cancelled with no error file and a total of 0."""
    data = ("\ufeff" + "\n".join([batch_line("a"), "not json", '{"custom_id": 7}', "",
                                   batch_line("a"), '["a"]', batch_line("b")]) + "\n")
    created = await harness.create_batch(await harness.upload(data.encode()))
    unreadable = await harness.create_batch(await harness.upload(b"not json\n{}\n"))
    for batch_id in (created["id"], unreadable["id"]):
        await harness.client.post(f"/v1/batches/{batch_id}/cancel")
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    errors = await harness.lines_of(batch["error_file_id"])
    assert [line["custom_id"] for line in errors] == ["a", "b"]
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    nothing = await harness.batch(unreadable["id"])
    assert nothing["status"] == "cancelled" and nothing["error_file_id"] is None
    assert nothing["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


async def test_cancel_of_a_completed_batch_is_a_409_that_says_do_not_retry(
    harness: Harness,
) -> None:
    batch = await harness.run_batch([batch_line("a")])
    response = await harness.client.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {"error": {
        "message": "Cannot cancel a batch with status 'completed'.",
        "type": "invalid_request_error", "param": None, "code": None}}


async def test_expiry_keeps_finished_results_and_expires_the_rest(harness: Harness) -> None:
    lines = [batch_line(f"r{i}") for i in range(4)]
    created = await harness.create_batch(await harness.upload(lines), completion_window="1h")
    assert created["expires_at"] == created["created_at"] + 3600
    assert await harness.worker.run_one_batch_task()
    assert await harness.worker.run_one_chunk()
    harness.clock.advance(3601)
    await harness.worker.drain()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "expired" and batch["expired_at"] is not None
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    errors = await harness.lines_of(batch["error_file_id"])
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_live_counts_while_in_progress(harness: Harness) -> None:
    created = await harness.create_batch(await harness.upload(
        [batch_line(f"r{i}") for i in range(4)]))
    assert await harness.worker.run_one_batch_task()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "in_progress" and batch["in_progress_at"] is not None
    assert batch["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
    assert await harness.worker.run_one_chunk()
    batch = await harness.batch(created["id"])
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 0}


async def test_list_batches_newest_first_with_cursor_paging(harness: Harness) -> None:
    file_id = await harness.upload([batch_line("a")])
    ids = [(await harness.create_batch(file_id))["id"] for _ in range(5)]
    page = (await harness.client.get("/v1/batches", params={"limit": 2})).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True and page["object"] == "list"
    assert page["first_id"] == ids[4] and page["last_id"] == ids[3]
    rest = (await harness.client.get("/v1/batches",
                                     params={"limit": 10, "after": page["last_id"]})).json()
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False


async def test_the_running_worker_is_woken_through_every_step_without_polling(
    settings: Settings,
) -> None:
    # With a poll interval far longer than the test, the batch only finishes if each step
    # wakes the loops the next one needs: creation wakes validation, validation wakes the
    # chunk slots (only one of which polls), each claim wakes the idle slots, and the last
    # commit wakes assembly even when another loop woke first.
    settings.embedded_worker = True
    settings.poll_seconds = 60.0
    settings.worker_chunks = 3
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://batchd",
            headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        data = "".join(batch_line(f"r{i}") + "\n" for i in range(12)).encode()
        upload = await client.post("/v1/files", files={"file": ("in.jsonl", data)},
                                   data={"purpose": "batch"})
        created = (await client.post("/v1/batches", json={
            "input_file_id": upload.json()["id"], "endpoint": ENDPOINT,
            "completion_window": "24h"})).json()
        started = time.monotonic()
        batch = created
        while batch["status"] != "completed" and time.monotonic() - started < 10:
            await asyncio.sleep(0.02)
            batch = (await client.get(f"/v1/batches/{created['id']}")).json()
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}


async def test_a_cancel_that_lands_while_the_file_is_read_ends_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation that finds the batch cancelled under it hands the batch over at once; it
    used to keep its lease until it ran out (30 s) before anyone could finish the cancel."""
    store = harness.worker.ctx.store
    start_batch = store.start_batch

    async def cancelled_meanwhile(batch_id: str, *args: Any, **kwargs: Any) -> bool:
        await store.request_cancel(batch_id, owner=None, now=int(harness.clock.now()))
        return await start_batch(batch_id, *args, **kwargs)

    monkeypatch.setattr(store, "start_batch", cancelled_meanwhile)
    batch = await harness.create_batch(await harness.upload([batch_line("a")]))
    await harness.worker.drain()  # the manual clock never lets a lease run out
    assert (await harness.batch(batch["id"]))["status"] == "cancelled"
