"""GET /v1/batches/{id}/output (a batchd extension): the output lines committed so far, each
once across pages, the same lines as the final output file, before and after the batch ends."""

from __future__ import annotations

import json

import httpx

from tests.support.harness import Harness, Tenants
from tests.support.lines import batch_line


async def page(client: httpx.AsyncClient, batch_id: str,
               after: str | None = None) -> tuple[list[str], str, bool]:
    params = {"after": after} if after else {}
    response = await client.get(f"/v1/batches/{batch_id}/output", params=params)
    assert response.status_code == 200, response.text
    ids = [json.loads(line)["custom_id"] for line in response.text.splitlines()]
    return ids, response.headers["x-batchd-after"], response.headers["x-batchd-more"] == "true"


async def test_lines_come_once_while_running_and_after_the_end(harness: Harness) -> None:
    lines = [batch_line(f"r{i}", "FAIL-ME" if i == 5 else f"q{i}") for i in range(10)]
    batch = await harness.create_batch(await harness.upload(lines))
    assert await harness.worker.run_one_batch_task()  # validated: 5 chunks of 2
    first, after, more = await page(harness.client, batch["id"])
    assert first == [] and more
    for _ in range(2):
        assert await harness.worker.run_one_chunk()
    second, after, more = await page(harness.client, batch["id"], after)
    assert sorted(second) == ["r0", "r1", "r2", "r3"] and more
    third, after, more = await page(harness.client, batch["id"], after)
    assert third == [] and more  # nothing new yet: nothing again
    assert await harness.worker.run_one_chunk()
    fourth, after, more = await page(harness.client, batch["id"], after)
    assert fourth == ["r4"] and more  # r5 failed: it is not an output line
    await harness.worker.drain()  # the rest runs; the batch ends; its parts are gone
    assert (await harness.batch(batch["id"]))["status"] == "completed"
    fifth, after, more = await page(harness.client, batch["id"], after)
    assert sorted(fifth) == ["r6", "r7", "r8", "r9"] and not more
    seen = second + fourth + fifth
    final = [line["custom_id"] for line in
             await harness.lines_of((await harness.batch(batch["id"]))["output_file_id"])]
    assert sorted(seen) == sorted(final) and len(set(seen)) == len(seen) == 9
    # Read from the start after the end: the final file's lines, in its order.
    whole, _, more = await page(harness.client, batch["id"])
    assert whole == final and not more


async def test_pages_end_on_parts_and_honour_the_limit(harness: Harness) -> None:
    done = await harness.run_batch([batch_line(f"r{i}") for i in range(10)])
    response = await harness.client.get(f"/v1/batches/{done['id']}/output", params={"limit": 3})
    assert response.headers["x-batchd-more"] == "true"
    got = response.text.splitlines()
    assert 3 <= len(got) <= 4  # a page ends on a part (2 lines a chunk here)
    rest = await harness.client.get(f"/v1/batches/{done['id']}/output",
                                    params={"after": response.headers["x-batchd-after"],
                                            "limit": 100})
    assert len(got) + len(rest.text.splitlines()) == 10
    assert rest.headers["x-batchd-more"] == "false"


async def test_bad_cursors_and_other_owners_are_refused(harness: Harness,
                                                        tenants: Tenants) -> None:
    done = await harness.run_batch([batch_line("a")])
    bad = await harness.client.get(f"/v1/batches/{done['id']}/output",
                                   params={"after": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    bob = await tenants.client("bob")
    assert (await bob.get(f"/v1/batches/{done['id']}/output")).status_code == 404
