"""/admin/files/{id}/lines and /v1/batches/{id}/output hold a bounded number of bytes, one
call and all calls together: lines are read in pieces (never whole: a file may be one 190 MB
line), /lines cuts a line over 1 MiB to a marker, pages end at a byte budget, and every call
reserves its bytes from one process-wide budget (503 when it is spent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from batchd import read_budget
from batchd.api import batches as batches_api
from batchd.api.console import LINE_BYTES, PAGE_BYTES
from batchd.read_budget import PIECE_BYTES, ByteBudget
from tests.support.harness import Harness
from tests.support.lines import batch_line


@pytest.fixture
def largest_read(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The largest bytes object the blob store handed out, whichever way it was read."""
    largest = [0]
    blobs = harness.blobs
    for name in ("lines", "read_range"):
        original = getattr(blobs, name)

        def measured(*args: Any, _original: Any = original, **kwargs: Any) -> Iterator[bytes]:
            for piece in _original(*args, **kwargs):
                largest[0] = max(largest[0], len(piece))
                yield piece

        monkeypatch.setattr(blobs, name, measured)
    return largest


def line_of(custom_id: str, size: int) -> bytes:
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": "instant-model", "messages": [
                            {"role": "user", "content": "x" * size}]}}) + "\n").encode()


async def test_lines_cuts_an_over_long_line_and_never_reads_it_whole(
    harness: Harness, largest_read: list[int],
) -> None:
    data = line_of("small-1", 10) + line_of("huge", 3 * LINE_BYTES) + line_of("small-2", 10)
    file_id = await harness.upload(data)
    response = await harness.client.get(f"/admin/files/{file_id}/lines")
    assert response.status_code == 200, response.text[:200]
    page = response.json()
    small, huge, last = page["data"]
    assert small["custom_id"] == "small-1" and small["body"]["messages"][0]["content"] == "x" * 10
    assert huge == {"custom_id": "huge", "truncated": True,
                    "bytes": len(line_of("huge", 3 * LINE_BYTES))}
    assert last["custom_id"] == "small-2" and page["has_more"] is False
    assert len(response.content) < 4096
    assert 0 < largest_read[0] <= PIECE_BYTES  # pieces only: the 3 MiB line never whole
    found = (await harness.client.get(f"/admin/files/{file_id}/lines",
                                      params={"custom_id": "huge"})).json()
    assert found["data"] == [huge]
    assert read_budget.READS.used == 0  # every call gave its reservation back


async def test_a_lines_page_ends_at_its_byte_budget(harness: Harness) -> None:
    size = LINE_BYTES * 3 // 4  # whole lines, not cut
    file_id = await harness.upload(b"".join(line_of(f"r{i}", size) for i in range(12)))
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        response = await harness.client.get(f"/admin/files/{file_id}/lines",
                                            params={"cursor": cursor, "limit": 500})
        assert len(response.content) <= PAGE_BYTES + LINE_BYTES  # not all 12 lines (9 MiB)
        page = response.json()
        assert all(not item.get("truncated") for item in page["data"])
        seen += [item["custom_id"] for item in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [f"r{i}" for i in range(12)] and pages >= 2


async def test_reads_wait_for_the_process_wide_budget_then_are_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = ByteBudget(100 * 1024 * 1024)
    monkeypatch.setattr(read_budget, "READS", budget)
    monkeypatch.setattr(read_budget, "WAIT_SECONDS", 0.2)
    file_id = await harness.upload([batch_line("a")])
    done = await harness.run_batch([batch_line("a")])
    hog = await budget.reserve(budget.total - 1024, owner="others", wait=0)  # nearly all
    for path in (f"/admin/files/{file_id}/lines", f"/v1/batches/{done['id']}/output"):
        refused = await harness.client.get(path)
        assert refused.status_code == 503, path
        assert refused.json()["error"]["code"] == "server_busy"
        assert refused.headers["retry-after"] == "1"
    hog.release()
    # Room again once they finish: a waiting read goes ahead.
    hog = await budget.reserve(budget.total - 1024, owner="others", wait=0)
    asyncio.get_running_loop().call_later(0.05, hog.release)
    assert (await harness.client.get(f"/admin/files/{file_id}/lines")).status_code == 200
    assert budget.used == 0


async def output_ids(harness: Harness, batch_id: str, after: str | None = None,
                     limit: int = 1000) -> tuple[list[str], str, bool, int]:
    params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
    response = await harness.client.get(f"/v1/batches/{batch_id}/output", params=params)
    assert response.status_code == 200, response.text[:300]
    ids = [json.loads(line)["custom_id"] for line in response.text.splitlines()]
    assert int(response.headers["x-batchd-lines"]) == len(ids)
    return (ids, response.headers["x-batchd-after"], response.headers["x-batchd-more"] == "true",
            len(response.content))


async def test_output_pages_end_at_their_byte_budget_inside_parts(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, largest_read: list[int],
) -> None:
    budget = 50_000
    monkeypatch.setattr(batches_api, "OUTPUT_PAGE_BYTES", budget)
    words = " ".join(["w"] * 15_000)  # each result line is about 30 KB: one fits a page
    lines = [batch_line(f"r{i}", words) for i in range(9)]
    created = await harness.create_batch(await harness.upload(lines))
    assert await harness.worker.run_one_batch_task()
    for _ in range(2):  # chunks of 2 lines: 2 parts of 2 results each
        assert await harness.worker.run_one_chunk()
    seen: list[str] = []
    after = None
    for _ in range(4):  # while it runs: a page of one line each time, inside the parts
        ids, after, more, size = await output_ids(harness, created["id"], after)
        assert len(ids) == 1 and more and size <= budget
        seen += ids
    ids, after, more, _ = await output_ids(harness, created["id"], after)
    assert ids == [] and more
    assert await harness.worker.run_one_chunk()
    ids, after, more, _ = await output_ids(harness, created["id"], after)  # stops mid-part
    assert len(ids) == 1 and "." in after  # the cursor says how much of the part was read
    seen += ids
    await harness.worker.drain()  # the batch ends; the rest is read from its output file
    while more:
        ids, after, more, size = await output_ids(harness, created["id"], after)
        assert len(ids) <= 1 and size <= budget
        seen += ids
    final = [line["custom_id"] for line in await harness.lines_of(
        (await harness.batch(created["id"]))["output_file_id"])]
    assert sorted(seen) == sorted(final) == sorted(f"r{i}" for i in range(9))
    assert len(seen) == len(set(seen))
    # From the start, after the end: the final file's order, a page at a time.
    again: list[str] = []
    after, more = None, True
    while more:
        ids, after, more, _ = await output_ids(harness, created["id"], after)
        again += ids
    assert again == final
    assert largest_read[0] <= PIECE_BYTES and read_budget.READS.used == 0


async def test_an_output_line_longer_than_a_page_comes_alone(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batches_api, "OUTPUT_PAGE_BYTES", 10_000)
    lines = [batch_line("small-0"), batch_line("big", " ".join(["w"] * 20_000)),
             batch_line("small-1")]
    done = await harness.run_batch(lines)
    pages = []
    after, more = None, True
    while more:
        ids, after, more, _ = await output_ids(harness, done["id"], after)
        pages.append(ids)
    assert [p for p in pages if p] == [["small-0"], ["big"], ["small-1"]]
    # One longer than everything reads may hold is refused, not read.
    monkeypatch.setattr(read_budget, "READS", ByteBudget(batches_api.OUTPUT_RESERVED + 50_000))
    response = await harness.client.get(f"/v1/batches/{done['id']}/output")
    assert response.status_code == 200  # small-0 alone: the page ends before "big"
    refused = await harness.client.get(f"/v1/batches/{done['id']}/output",
                                       params={"after": response.headers["x-batchd-after"]})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "output_line_too_large"
    assert read_budget.READS.used == 0
