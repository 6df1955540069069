"""Owners, keys, tiers: isolation on every endpoint, rate limits, quotas and size limits."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from batchd.settings import Settings
from tests.support.harness import Harness, Tenants
from tests.support.lines import batch_line

TIERS = """
default_tier: core
tiers:
  core: {}
  enterprise: {}
  tiny:
    requests_per_minute: 5
    max_batch_requests: 3
    max_concurrent_batches: 2
    max_upload_bytes: 2000
    enqueued_tokens_per_model: 250
"""


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    path = tmp_path / "tiers.yaml"
    path.write_text(TIERS)
    return settings.model_copy(update={"tiers": path})


async def upload(client: httpx.AsyncClient, lines: list[str]) -> str:
    data = ("\n".join(lines) + "\n").encode()
    response = await client.post("/v1/files", files={"file": ("in.jsonl", data)},
                                 data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def create(client: httpx.AsyncClient, file_id: str) -> httpx.Response:
    return await client.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})


async def test_another_owners_objects_are_404_everywhere(harness: Harness,
                                                         tenants: Tenants) -> None:
    alice = await tenants.client("alice")
    bob = await tenants.client("bob")
    file_id = await upload(alice, [batch_line("a"), batch_line("b", "FAIL-ME")])
    batch_id = (await create(alice, file_id)).json()["id"]
    await harness.worker.drain()
    done = (await alice.get(f"/v1/batches/{batch_id}")).json()
    assert done["status"] == "completed"
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content",
                 f"/v1/files/{done['output_file_id']}/content",
                 f"/v1/files/{done['error_file_id']}", f"/v1/batches/{batch_id}"):
        response = await bob.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (await bob.delete(f"/v1/files/{file_id}")).status_code == 404
    assert (await bob.post(f"/v1/batches/{batch_id}/cancel")).status_code == 404
    assert (await bob.get("/v1/files")).json()["data"] == []
    assert (await bob.get("/v1/batches")).json()["data"] == []
    # Alice's file as Bob's input: as if it did not exist.
    stolen = (await create(bob, file_id)).json()["id"]
    await harness.worker.drain()
    failed = (await bob.get(f"/v1/batches/{stolen}")).json()
    assert failed["status"] == "failed" and "Cannot find file" in (
        failed["errors"]["data"][0]["message"])
    # Alice still sees all of hers; an admin sees everyone's.
    assert (await alice.get(f"/v1/files/{file_id}")).status_code == 200
    admin_ids = {b["id"] for b in (await harness.client.get("/v1/batches")).json()["data"]}
    assert {batch_id, stolen} <= admin_ids


async def test_keys_of_one_owner_share_its_objects(tenants: Tenants) -> None:
    laptop = await tenants.client("team-laptop", owner="team")
    ci = await tenants.client("team-ci", owner="team")
    file_id = await upload(laptop, [batch_line("a")])
    assert (await ci.get(f"/v1/files/{file_id}")).status_code == 200


async def test_revoked_key_stops_working_at_once(harness: Harness, tenants: Tenants) -> None:
    carol = await tenants.client("carol")
    assert (await carol.get("/v1/models")).status_code == 200
    services = harness.services
    assert await services.keys.revoke((await services.keys.resolve("carol")).id) is not None
    response = await carol.get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_requests_per_minute_with_openai_headers_and_recovery(
    harness: Harness, tenants: Tenants
) -> None:
    tiny = await tenants.client("tiny-user", tier="tiny")
    first = await tiny.get("/v1/models")
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    for _ in range(4):
        assert (await tiny.get("/v1/models")).status_code == 200
    limited = await tiny.get("/v1/models")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    harness.clock.advance(13)  # 5 per minute: one request back every 12 s
    assert (await tiny.get("/v1/models")).status_code == 200
    other = await tenants.client("other-core")  # limits are per key
    assert (await other.get("/v1/models")).status_code == 200


async def test_tier_limits_on_upload_size_batch_lines_and_concurrency(
    harness: Harness, tenants: Tenants
) -> None:
    tiny = await tenants.client("tiny-limits", tier="tiny")
    big = await tiny.post("/v1/files", files={"file": ("big.jsonl", b"x" * 2001)},
                          data={"purpose": "batch"})
    assert big.status_code == 400 and big.json()["error"]["message"].startswith(
        "File is too large.")
    harness.clock.advance(60)
    many = await upload(tiny, [batch_line(f"r{i}") for i in range(4)])
    too_many = (await create(tiny, many)).json()["id"]
    await harness.worker.drain()
    failed = (await harness.client.get(f"/v1/batches/{too_many}")).json()
    assert failed["errors"]["data"][0]["code"] == "too_many_tasks"
    harness.clock.advance(60)
    one = await upload(tiny, [batch_line("a", max_tokens=1)])
    assert (await create(tiny, one)).status_code == 200
    assert (await create(tiny, one)).status_code == 200
    third = await create(tiny, one)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "concurrent_batch_limit_exceeded"
    assert third.headers["x-should-retry"] == "false"


async def test_enqueued_token_quota_is_reserved_and_released(
    harness: Harness, tenants: Tenants
) -> None:
    tiny = await tenants.client("tiny-quota", tier="tiny")
    # Each request: a short prompt (~5 tokens) and up to 100 output tokens.
    file_id = await upload(tiny, [batch_line("a", max_tokens=100),
                                  batch_line("b", max_tokens=100)])
    first = (await create(tiny, file_id)).json()["id"]
    assert await harness.worker.run_one_batch_task()  # validated: ~210 tokens enqueued
    harness.clock.advance(60)
    second = (await create(tiny, file_id)).json()["id"]
    assert await harness.worker.run_one_batch_task()
    over = (await tiny.get(f"/v1/batches/{second}")).json()
    assert over["status"] == "failed"
    [error] = over["errors"]["data"]
    assert error["code"] == "token_limit_exceeded"
    assert "instant-model" in error["message"] and "250" in error["message"]
    # Cancelling (like completing, failing or expiring) the first releases its tokens.
    await tiny.post(f"/v1/batches/{first}/cancel")
    await harness.worker.drain()
    harness.clock.advance(60)
    third = (await create(tiny, file_id)).json()["id"]
    await harness.worker.drain()
    assert (await tiny.get(f"/v1/batches/{third}")).json()["status"] == "completed"
    harness.clock.advance(60)
    fourth = (await create(tiny, file_id)).json()["id"]  # the completed one released too
    await harness.worker.drain()
    assert (await tiny.get(f"/v1/batches/{fourth}")).json()["status"] == "completed"
    # An expired batch releases its tokens as well.
    harness.clock.advance(60)
    expiring = (await tiny.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "1h"})).json()["id"]
    assert await harness.worker.run_one_batch_task()  # validated: tokens enqueued
    harness.clock.advance(3601)
    await harness.worker.drain()
    assert (await tiny.get(f"/v1/batches/{expiring}")).json()["status"] == "expired"
    fifth = (await create(tiny, file_id)).json()["id"]
    await harness.worker.drain()
    assert (await tiny.get(f"/v1/batches/{fifth}")).json()["status"] == "completed"


async def test_json_bodies_have_a_size_limit(harness: Harness) -> None:
    huge = {"input_file_id": "x" * (2 * 1024 * 1024), "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}
    response = await harness.client.post("/v1/batches", json=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_admin_api_manages_keys_and_needs_an_admin(harness: Harness,
                                                         tenants: Tenants) -> None:
    user = await tenants.client("plain-user")
    assert (await user.get("/admin/keys")).status_code == 403
    created = await harness.client.post("/admin/keys", json={"name": "dave", "tier": "tiny"})
    assert created.status_code == 200
    body = created.json()
    assert body["tier"] == "tiny" and body["owner"] == "dave" and body["secret"]
    listed = (await harness.client.get("/admin/keys")).json()["data"]
    assert any(k["name"] == "dave" for k in listed)
    assert all("secret" not in k for k in listed)
    dave = harness.client_with(body["secret"])
    async with dave:
        assert (await dave.get("/v1/models")).status_code == 200
        revoked = await harness.client.post(f"/admin/keys/{body['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert (await dave.get("/v1/models")).status_code == 401
    bad_tier = await harness.client.post("/admin/keys", json={"name": "x", "tier": "gold"})
    assert bad_tier.status_code == 400 and bad_tier.json()["error"]["param"] == "tier"
