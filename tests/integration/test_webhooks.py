"""Webhooks: endpoints per owner, events in the outbox with the status change, deliveries
signed as OpenAI signs them (checked with the openai SDK), retried, then the endpoint disabled."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from batchd.settings import Settings
from batchd.webhooks.sender import BACKOFF, PER_ENDPOINT, PER_OWNER, WebhookSender
from tests.support.harness import Harness, Tenants, submit_batch
from tests.support.lines import batch_line
from tests.support.ports import free_port
from tests.support.webhook_receiver import Receiver, receiving, silent


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


async def test_one_owners_dead_receivers_do_not_hold_up_another_owners_events(
    harness: Harness, tenants: Tenants,
) -> None:
    """Alice has 16 endpoints that take connections and never answer, and sends them test
    events as fast as she is allowed; Bob's batch.completed still arrives at once, not after
    the webhook timeout times the depth of the queue ahead of it."""
    timeout = harness.settings.webhook_timeout_seconds
    assert timeout >= 10
    alice, bob = await tenants.client("alice"), await tenants.client("bob")
    with silent() as never, receiving() as receiver:
        endpoints = [await register(alice, f"{never}/{i}") for i in range(16)]
        answers = [(await alice.post(f"/admin/webhooks/{e['id']}/test")).status_code
                   for _ in range(3) for e in endpoints]
        assert answers.count(200) >= 16 and set(answers) <= {200, 429}
        mine = await register(bob, receiver.url, events=["batch.completed"])
        harness.worker.start()
        try:
            await asyncio.sleep(0.5)  # Alice's deliveries are in flight, hanging
            started = time.monotonic()
            batch_id = await submit_batch(bob, [batch_line("a")])
            while not receiver.received and time.monotonic() - started < 1.5 * timeout:
                await asyncio.sleep(0.05)
            waited = time.monotonic() - started
        finally:
            await harness.worker.stop(grace_seconds=0.5)
    assert receiver.received, "Bob's event never came"
    event = unwrap(receiver, str(mine["secret"]))
    assert event.data.id == batch_id  # type: ignore[attr-defined]
    assert waited < 5, f"Bob's batch.completed took {waited:.1f} s"


async def test_test_events_are_rate_limited_per_endpoint_and_per_owner(
    harness: Harness, receiver: Receiver,
) -> None:
    endpoints = [str((await register(harness.client, receiver.url))["id"]) for _ in range(5)]

    async def test(endpoint_id: str) -> httpx.Response:
        return await harness.client.post(f"/admin/webhooks/{endpoint_id}/test")

    for _ in range(5):
        assert (await test(endpoints[0])).status_code == 200
    over = await test(endpoints[0])
    error = over.json()["error"]
    assert over.status_code == 429 and error["code"] == "rate_limit_exceeded"
    assert "at most 5 per endpoint per minute" in error["message"]
    assert error["param"] == "endpoint_id" and int(over.headers["retry-after"]) == 60
    for endpoint_id in endpoints[1:4]:
        for _ in range(5):
            assert (await test(endpoint_id)).status_code == 200
    over = await test(endpoints[4])  # a fresh endpoint, but the owner has sent 20
    assert over.status_code == 429
    assert "at most 20 per owner per minute" in over.json()["error"]["message"]
    harness.clock.advance(61)
    assert (await test(endpoints[4])).status_code == 200
    await harness.worker.drain()
    assert len(receiver.received) == 21


async def test_several_workers_deliver_each_event_once_within_the_caps(
    harness: Harness, tenants: Tenants, receiver: Receiver,
) -> None:
    receiver.delay = 0.1  # long enough for the senders to overlap
    expected = 0
    for name in ("ann", "ben", "cat"):
        client = await tenants.client(name)
        for n in range(3):
            endpoint = await register(client, f"{receiver.url}/{name}/{n}")
            for _ in range(4):
                assert (await client.post(
                    f"/admin/webhooks/{endpoint['id']}/test")).status_code == 200
                expected += 1
    ctx = harness.worker.ctx
    senders = [WebhookSender(store=ctx.store, clock=harness.clock, settings=harness.settings)
               for _ in range(3)]

    async def run(sender: WebhookSender) -> None:
        while await sender.step():
            pass

    try:
        await asyncio.gather(*(run(s) for s in senders))
    finally:
        for sender in senders:
            await sender.aclose()
    ids = [(got.path, got.headers["webhook-id"]) for got in receiver.received]
    assert len(ids) == expected and len(set(ids)) == expected  # each once
    for name in ("ann", "ben", "cat"):
        assert receiver.peak[f"/hooks/{name}"] <= PER_OWNER
        assert all(receiver.peak[f"/hooks/{name}/{n}"] <= PER_ENDPOINT for n in range(3))
    assert receiver.peak["/hooks"] > PER_OWNER  # the owners were served side by side


def fake_dns(monkeypatch: pytest.MonkeyPatch, **names: list[list[str]]) -> dict[str, int]:
    """The system resolver, answering the given names (`_` for `.`) with one list of
    addresses per question, the last one again once they run out; other names as usual.
    Returns how often each was asked."""
    real, asked = socket.getaddrinfo, dict[str, int]()
    answers = {name.replace("_", "."): lists for name, lists in names.items()}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        n = asked[name] = asked.get(name, 0) + 1
        found = answers[name][min(n, len(answers[name])) - 1]
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port or 0), 0, 0))
                if ":" in a else (socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                  (a, int(port or 0))) for a in found]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def fresh_sender(harness: Harness) -> None:
    """A sender that takes the settings as they are now (the timeout is read once)."""
    harness.worker.webhooks = WebhookSender(store=harness.worker.ctx.store,
                                            clock=harness.clock, settings=harness.settings)


async def attempts(harness: Harness, endpoint: dict[str, object]) -> list[dict[str, Any]]:
    deliveries = (await harness.client.get(
        f"/admin/webhooks/{endpoint['id']}/deliveries")).json()["data"]
    return [a for d in deliveries for a in d["attempts"]]


async def test_a_name_that_rebinds_to_loopback_after_the_check_never_reaches_it(
    harness: Harness, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name answers a public address first and 127.0.0.1 after: the connection goes to
    the address that was checked, and the next one, checked again, is refused."""
    harness.settings.webhook_allowed_hosts = None
    harness.settings.webhook_timeout_seconds = 1
    fresh_sender(harness)
    asked = fake_dns(monkeypatch, rebind_test=[["8.8.8.8"], ["127.0.0.1"]])
    endpoint = await register(harness.client, f"http://rebind.test:{receiver.port}/hooks")
    try:
        await harness.run_batch([batch_line("a")])
        assert receiver.received == [] and asked["rebind.test"] == 1
        harness.clock.advance(BACKOFF[0] * harness.settings.webhook_first_retry_seconds + 1)
        await harness.worker.drain()
    finally:
        await harness.worker.webhooks.aclose()
    assert receiver.received == []
    first, second = await attempts(harness, endpoint)
    assert first["status"] is None and "not public" in second["error"]
    state = (await harness.client.get(f"/admin/webhooks/{endpoint['id']}")).json()
    assert state["status"] == "disabled"  # a refused address is not tried again


async def test_delivery_errors_never_say_what_a_name_resolves_to(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness.settings.webhook_allowed_hosts = None
    fresh_sender(harness)
    fake_dns(monkeypatch, inside_test=[["10.20.30.40"]], mixed_test=[["8.8.8.8", "fd00::7"]],
             nat64_test=[["64:ff9b::a14:1e28"]])
    endpoints = [await register(harness.client, f"http://{name}/hooks")
                 for name in ("inside.test", "mixed.test", "nat64.test")]
    try:
        await harness.run_batch([batch_line("a")])
    finally:
        await harness.worker.webhooks.aclose()
    for endpoint in endpoints:
        [attempt] = await attempts(harness, endpoint)
        state = (await harness.client.get(f"/admin/webhooks/{endpoint['id']}")).json()
        shown = f"{attempt['error']} {state['disabled_reason']}"
        assert "the address is not public" in attempt["error"], shown
        for secret in ("10.20.30.40", "fd00", "64:ff9b", "a14:1e28", "8.8.8.8"):
            assert secret not in shown, shown


async def test_connection_errors_to_allowed_names_say_no_address(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nothing listens there
    harness.settings.webhook_allowed_hosts = "inside.test"
    fake_dns(monkeypatch, inside_test=[["127.0.0.1"]])
    endpoint = await register(harness.client, f"http://inside.test:{port}/hooks")
    await harness.run_batch([batch_line("a")])
    [attempt] = await attempts(harness, endpoint)
    assert attempt["error"] == "could not connect (Connection refused)"


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "127.0.0.1.",
                                  "0x7f.0.0.1", "0177.0.0.1", "10.1", "[64:ff9b::7f00:1]",
                                  "[2002:a9fe:a9fe::1]", "[::ffff:169.254.169.254]"])
async def test_addresses_in_disguise_are_refused_at_registration(
    harness: Harness, host: str,
) -> None:
    harness.settings.webhook_allowed_hosts = None
    response = await harness.client.post("/admin/webhooks",
                                         json={"url": f"http://{host}:8080/hooks"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "url"
