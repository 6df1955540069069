"""The two endpoints the console needs beyond OpenAI's: who a key is, and a page of a result
file's lines (owner-scoped like every other read)."""

from __future__ import annotations

from tests.support.harness import Harness, Tenants
from tests.support.lines import batch_line


async def test_a_key_learns_who_it_is_and_its_limits(harness: Harness, tenants: Tenants) -> None:
    alice = await tenants.client("alice", tier="trial")
    session = (await alice.get("/admin/session")).json()
    assert (session["owner"], session["role"], session["tier"]) == ("alice", "user", "trial")
    limits = session["limits"]
    assert limits["max_batch_file_bytes"] <= limits["max_upload_bytes"]
    assert {m["id"]: m["engine"] for m in session["models"]}["instant-model"] == "instant"
    assert (await harness.client.get("/admin/session")).json()["role"] == "admin"


async def test_result_lines_page_and_find_a_custom_id_for_their_owner_only(
    harness: Harness, tenants: Tenants,
) -> None:
    batch = await harness.run_batch([batch_line(f"r{i}") for i in range(7)])
    output = batch["output_file_id"]
    first = (await harness.client.get(f"/admin/files/{output}/lines?limit=5")).json()
    assert len(first["data"]) == 5 and first["has_more"]
    rest = (await harness.client.get(
        f"/admin/files/{output}/lines?cursor={first['next_cursor']}&limit=5")).json()
    assert len(rest["data"]) == 2 and not rest["has_more"] and rest["next_cursor"] is None
    ids = [line["custom_id"] for line in first["data"] + rest["data"]]
    assert sorted(ids) == sorted(f"r{i}" for i in range(7))
    found = (await harness.client.get(f"/admin/files/{output}/lines?custom_id=r3")).json()
    assert [line["custom_id"] for line in found["data"]] == ["r3"]
    bob = await tenants.client("bob")
    assert (await bob.get(f"/admin/files/{output}/lines")).status_code == 404
