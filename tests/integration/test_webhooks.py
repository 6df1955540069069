"""Webhooks: endpoints per owner, events in the outbox with the status change, deliveries
signed as OpenAI signs them (checked with the openai SDK), retried, then the endpoint disabled."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from batchd.settings import Settings
from batchd.webhooks.sender import BACKOFF
from tests.conftest import Harness, Tenants, batch_line
from tests.webhook_receiver import Receiver, receiving


@pytest.fixture(autouse=True)
def local_receivers_allowed(settings: Settings) -> None:
    """The test receivers listen on 127.0.0.1, an address batchd refuses unless listed."""
    settings.webhook_allowed_hosts = "127.0.0.1"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


async def register(client: httpx.AsyncClient, url: str, **extra: object) -> dict[str, object]:
    response = await client.post("/admin/webhooks", json={"url": url, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def unwrap(receiver: Receiver, secret: str, index: int = 0) -> object:
    got = receiver.received[index]
    return OpenAI(api_key="unused").webhooks.unwrap(got.body, got.headers, secret=secret)


async def test_a_finished_batch_is_announced_and_the_sdk_verifies_it(
    harness: Harness, receiver: Receiver,
) -> None:
    endpoint = await register(harness.client, receiver.url)
    assert str(endpoint["secret"]).startswith("whsec_") and endpoint["status"] == "enabled"
    listed = (await harness.client.get("/admin/webhooks")).json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    batch = await harness.run_batch([batch_line("a"), batch_line("b")])
    event = unwrap(receiver, str(endpoint["secret"]))
    assert event.type == "batch.completed" and event.data.id == batch["id"]  # type: ignore[attr-defined]
    assert event.object == "event" and event.id.startswith("evt_")  # type: ignore[attr-defined]
    deliveries = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"]
    assert deliveries[0]["state"] == "delivered"
    assert [a["status"] for a in deliveries[0]["attempts"]] == [200]
    # A wrong secret does not verify.
    with pytest.raises(Exception, match="signature"):
        unwrap(receiver, "whsec_" + "A" * 43 + "=")


async def test_each_terminal_status_has_its_event_and_subscriptions_filter(
    harness: Harness, receiver: Receiver,
) -> None:
    endpoint = await register(harness.client, receiver.url,
                              events=["batch.failed", "batch.cancelled"])
    await harness.run_batch([batch_line("ok")])  # completed: not subscribed
    await harness.run_batch(["{broken"])  # failed validation
    created = await harness.create_batch(await harness.upload([batch_line("c")]))
    await harness.client.post(f"/v1/batches/{created['id']}/cancel")
    await harness.worker.drain()
    types = [unwrap(receiver, str(endpoint["secret"]), i).type  # type: ignore[attr-defined]
             for i in range(len(receiver.received))]
    assert types == ["batch.failed", "batch.cancelled"]


async def test_failures_are_retried_with_growing_waits_then_the_endpoint_is_disabled(
    harness: Harness, receiver: Receiver,
) -> None:
    receiver.status = 500
    endpoint = await register(harness.client, receiver.url)
    await harness.run_batch([batch_line("a")])
    assert len(receiver.received) == 1
    await harness.worker.drain()
    assert len(receiver.received) == 1  # not due again yet
    first_retry = harness.settings.webhook_first_retry_seconds
    for n, factor in enumerate(BACKOFF):
        harness.clock.advance(factor * first_retry + 0.5)
        await harness.worker.drain()
        assert len(receiver.received) == n + 2
    state = (await harness.client.get(f"/admin/webhooks/{endpoint['id']}")).json()
    assert state["status"] == "disabled" and "HTTP 500" in state["disabled_reason"]
    delivery = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"][0]
    assert delivery["state"] == "failed" and len(delivery["attempts"]) == len(BACKOFF) + 1
    assert sum(BACKOFF) * 5 > 20 * 3600  # about a day with the default first wait
    # Fixed and enabled again: new events flow.
    receiver.status = 200
    assert (await harness.client.post(
        f"/admin/webhooks/{endpoint['id']}/enable")).json()["status"] == "enabled"
    await harness.run_batch([batch_line("b")])
    assert len(receiver.received) == len(BACKOFF) + 2


async def test_redirects_are_not_followed_and_slow_receivers_time_out(
    harness: Harness, receiver: Receiver,
) -> None:
    with receiving() as elsewhere:
        receiver.status, receiver.location = 307, elsewhere.url
        endpoint = await register(harness.client, receiver.url)
        await harness.run_batch([batch_line("a")])
        assert len(receiver.received) == 1 and elsewhere.received == []
    attempt = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"][0]["attempts"][0]
    assert attempt["status"] == 307 and "not followed" in attempt["error"]
    receiver.status, receiver.location, receiver.delay = 200, None, 2.0
    harness.settings.webhook_timeout_seconds = 0.2
    harness.worker.webhooks = type(harness.worker.webhooks)(
        store=harness.worker.ctx.store, clock=harness.clock, settings=harness.settings)
    slow = await register(harness.client, receiver.url, events=["batch.completed"])
    await harness.run_batch([batch_line("b")])
    attempt = (await harness.client.get(
        f"/admin/webhooks/{slow['id']}/deliveries")).json()["data"][0]["attempts"][0]
    assert attempt["status"] is None and "no answer within" in attempt["error"]
    await harness.worker.webhooks.aclose()


async def test_endpoints_are_checked_owned_and_rotated(harness: Harness,
                                                       tenants: Tenants) -> None:
    for url, code in (("ftp://example.com/x", "invalid_value"), ("not a url", "invalid_value"),
                      ("http://user:pw@example.com/", "invalid_value")):
        response = await harness.client.post("/admin/webhooks", json={"url": url})
        assert response.status_code == 400 and response.json()["error"]["code"] == code
    harness.settings.webhook_allowed_hosts = "hooks.example.com,*.corp.example"
    for url, status in (("https://hooks.example.com/x", 200), ("https://a.corp.example/x", 200),
                        ("http://169.254.169.254/latest", 400), ("http://localhost:1/", 400)):
        response = await harness.client.post("/admin/webhooks", json={"url": url})
        assert response.status_code == status, (url, response.text)
    alice, bob = await tenants.client("alice"), await tenants.client("bob")
    harness.settings.webhook_allowed_hosts = None
    # No allow-list: public hosts only; addresses inside the network are refused.
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "http://[::1]/x",
                "http://10.1.2.3/x", "http://localhost/x", "http://h:abc/x"):
        response = await harness.client.post("/admin/webhooks", json={"url": url})
        assert response.status_code == 400, (url, response.text)
    mine = (await alice.post("/admin/webhooks", json={"url": "https://x.example/h"})).json()
    assert mine["owner"] == "alice"
    assert (await bob.get(f"/admin/webhooks/{mine['id']}")).status_code == 404
    assert (await bob.get("/admin/webhooks")).json()["data"] == []
    assert (await bob.post("/admin/webhooks", json={
        "url": "https://x.example/h", "owner": "alice"})).status_code == 403
    rotated = (await alice.post(f"/admin/webhooks/{mine['id']}/rotate")).json()
    assert rotated["secret"] != mine["secret"] and rotated["secret"].startswith("whsec_")
    assert (await alice.delete(f"/admin/webhooks/{mine['id']}")).status_code == 200
    assert (await alice.get(f"/admin/webhooks/{mine['id']}")).status_code == 404


async def test_a_test_event_reaches_the_endpoint(harness: Harness, receiver: Receiver) -> None:
    endpoint = await register(harness.client, receiver.url)
    queued = await harness.client.post(f"/admin/webhooks/{endpoint['id']}/test")
    assert queued.status_code == 200 and queued.json()["data"][0]["event_type"] == "webhook.test"
    await harness.worker.drain()
    got = unwrap(receiver, str(endpoint["secret"]))
    assert got.type == "webhook.test"  # type: ignore[attr-defined]


async def test_deliveries_waiting_when_an_endpoint_is_disabled_go_out_once_it_is_enabled(
    harness: Harness, receiver: Receiver,
) -> None:
    receiver.status = 500
    endpoint = await register(harness.client, receiver.url)
    await harness.run_batch([batch_line("first")])
    first_retry = harness.settings.webhook_first_retry_seconds
    for n, factor in enumerate(BACKOFF):
        if n == len(BACKOFF) - 1:  # a second event, late in the first one's retries
            await harness.run_batch([batch_line("second")])
        harness.clock.advance(factor * first_retry + 0.5)
        await harness.worker.drain()
    state = (await harness.client.get(f"/admin/webhooks/{endpoint['id']}")).json()
    assert state["status"] == "disabled"
    deliveries = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"]
    assert sorted(d["state"] for d in deliveries) == ["failed", "pending"]
    receiver.status = 200
    await harness.client.post(f"/admin/webhooks/{endpoint['id']}/enable")
    harness.clock.advance(10 * 3600)
    await harness.worker.drain()
    deliveries = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"]
    assert sorted(d["state"] for d in deliveries) == ["delivered", "failed"]
