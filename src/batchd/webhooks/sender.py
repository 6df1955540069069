"""Delivering webhook events: signed as OpenAI signs them (Standard Webhooks), retried with
growing waits for about a day, the endpoint disabled (with the reason) when that fails.

Runs as its own loop in every worker, apart from the batch work: a slow or hanging receiver
holds only its own delivery, for at most `BATCHD_WEBHOOK_TIMEOUT_SECONDS`. Each delivery is a
task of its own in one of SLOTS slots, and a slot that frees is filled at the next step; the
store hands out due deliveries round-robin by owner and caps how many each owner and endpoint
have in flight (store/webhooks.py), so one tenant's dead receivers cannot hold up another's.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from standardwebhooks import Webhook

from batchd import __version__, metrics
from batchd.clock import Clock
from batchd.settings import Settings
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.store.roles import DeliveryVerbs
from batchd.webhooks.pinned import (
    NOT_PUBLIC,
    AddressNotPublic,
    ConnectFailed,
    PinnedBackend,
    PinnedTransport,
    os_reason,
)
from batchd.webhooks.targets import allowed_hosts, host_allowed, internal_literal

log = logging.getLogger(__name__)

# Waits between attempts, in units of BATCHD_WEBHOOK_FIRST_RETRY_SECONDS (5 s by default:
# 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h; about 23.6 hours in all).
BACKOFF = (1, 6, 24, 120, 360, 720, 1440, 2880, 5760, 5760)
SLOTS = 16  # deliveries one worker sends at once
PER_OWNER = 4  # deliveries in flight at once for one owner, across all workers
PER_ENDPOINT = 2  # and for one endpoint


def event_body(event: WebhookEvent) -> bytes:
    return orjson.dumps({"id": event.id, "object": "event", "type": event.type,
                         "created_at": event.created_at, "data": event.data})


def signed_headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, as OpenAI sends them (the SDK's `webhooks.unwrap` checks
    them): the signature is HMAC-SHA256 of `id.timestamp.body` with the `whsec_` secret."""
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return {"webhook-id": event_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": Webhook(secret).sign(event_id, when, body.decode()),
            "content-type": "application/json", "user-agent": f"batchd-webhooks/{__version__}"}


class WebhookSender:
    def __init__(self, *, store: DeliveryVerbs, clock: Clock, settings: Settings) -> None:
        self.store, self.clock, self.settings = store, clock, settings
        self._http: httpx.AsyncClient | None = None  # opened at the first delivery
        self._running: set[asyncio.Task[None]] = set()

    @property
    def allowed(self) -> tuple[str, ...] | None:
        return allowed_hosts(self.settings.webhook_allowed_hosts)

    async def settle(self) -> None:
        """Wait for the deliveries in flight (a stopping worker's grace); cancelled, cancel
        them (their leases lapse and another worker sends them again)."""
        try:
            while self._running:
                await asyncio.wait(set(self._running))
        except asyncio.CancelledError:
            await self._cancel_running()
            raise

    async def _cancel_running(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def aclose(self) -> None:
        await self._cancel_running()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # Connections go only to the addresses checked when they were opened (no DNS
            # rebinding), unless an allow-list trusts the host wherever it resolves.
            backend = PinnedBackend(checking=lambda: self.allowed is None)
            # Redirects are never followed: the receiver is the URL that was registered.
            self._http = httpx.AsyncClient(
                transport=PinnedTransport(backend),
                follow_redirects=False, trust_env=False,
                timeout=self.settings.webhook_timeout_seconds)
        return self._http

    async def step(self) -> bool:
        """Start the due deliveries that free slots can take, each as its own task; whether
        any were started or are still in flight (so a worker's `drain` waits for them).

        With deliveries in flight and nothing new due, it waits until one ends or a poll
        interval passes: a freed slot is filled at once, and what comes due for another owner
        meanwhile is seen within a poll interval, however long the slow receivers take."""
        free = SLOTS - len(self._running)
        due = []
        if free > 0:
            lease = self.settings.webhook_timeout_seconds * 3 + 30
            due = await self.store.claim_deliveries(
                now=self.clock.now(), lease_seconds=lease, limit=free,
                per_owner=PER_OWNER, per_endpoint=PER_ENDPOINT)
        for claim in due:
            task = asyncio.create_task(self._deliver(*claim),
                                       name=f"webhook:{claim[0].id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if not due and self._running:
            await asyncio.wait(set(self._running), timeout=self.settings.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        return bool(due) or bool(self._running)

    async def _deliver(self, delivery: WebhookDelivery, event: WebhookEvent,
                       endpoint: WebhookEndpoint) -> None:
        """One delivery, as a task: a failure (the store unreachable to record it) is logged
        here or nowhere; the lease then lapses and the delivery is tried again."""
        try:
            await self._deliver_once(delivery, event, endpoint)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery %s failed", delivery.id)

    async def _deliver_once(self, delivery: WebhookDelivery, event: WebhookEvent,
                            endpoint: WebhookEndpoint) -> None:
        now = int(self.clock.now())
        status, error, final = await self._attempt(event, endpoint)
        delivered = status is not None and 200 <= status < 300
        attempt: dict[str, Any] = {"at": now, "status": status, "error": error}
        next_at: float | None = None
        disable: str | None = None
        if not delivered:
            if endpoint.disabled_at is not None or endpoint.deleted_at is not None:
                pass  # no more tries for an endpoint that was turned off
            elif delivery.attempts + 1 <= len(BACKOFF) and not final:
                wait = BACKOFF[delivery.attempts] * self.settings.webhook_first_retry_seconds
                next_at = self.clock.now() + wait
            else:
                disable = (f"Deliveries kept failing: {event.id} ({event.type}) was not "
                           f"accepted after {delivery.attempts + 1} attempts (last: "
                           f"{error}). Fix the receiver, then enable the endpoint again.")
                log.warning("webhook endpoint %s disabled: %s", endpoint.id, disable)
        outcome = "delivered" if delivered else "retry" if next_at is not None else "failed"
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        await self.store.finish_attempt(delivery, attempt=attempt, next_attempt_at=next_at,
                                        delivered=delivered, disable_reason=disable, now=now)

    async def _attempt(self, event: WebhookEvent,
                       endpoint: WebhookEndpoint) -> tuple[int | None, str | None, bool]:
        """(HTTP status, error, whether retrying cannot help: a host that is not allowed, a
        URL that is not one). Errors are shown to the tenant: they say what went wrong in
        general words, never which address a name resolved to."""
        if endpoint.deleted_at is not None or endpoint.disabled_at is not None:
            return None, "endpoint disabled", False
        host = urlsplit(endpoint.url).hostname or ""
        if not host_allowed(host, self.allowed):
            return None, f"host '{host}' is not on the allow-list", True
        if self.allowed is None and internal_literal(host):
            return None, _REFUSED, True  # names are checked as they connect (pinned.py)
        body = event_body(event)
        # The receiver checks the timestamp against its own clock (replay protection): it
        # is the wall clock of the moment of sending, whatever clock schedules the attempts.
        sent_at = int(time.time())
        limit = self.settings.webhook_timeout_seconds
        try:
            # One deadline for the whole attempt (connect, send, answer): a receiver that
            # trickles bytes cannot hold a delivery past it.
            async with asyncio.timeout(limit), self._client().stream(
                    "POST", endpoint.url, content=body,
                    headers=signed_headers(endpoint.secret, event.id, sent_at, body)
            ) as response:
                read = 0
                async for piece in response.aiter_raw():  # the body is not kept
                    read += len(piece)
                    if read > _MAX_ANSWER:
                        break
                status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {limit:g} s", False
        except AddressNotPublic:
            return None, _REFUSED, True
        except httpx.InvalidURL:
            return None, "invalid URL", True
        except httpx.HTTPError as exc:
            log.info("webhook delivery %s to endpoint %s failed: %r", event.id, endpoint.id,
                     exc)  # the details, with any address, for the operator only
            return None, failure_reason(exc), False
        except Exception as exc:  # never let one delivery stop the others
            log.warning("webhook delivery %s failed: %r", event.id, exc)
            return None, f"{type(exc).__name__}", False
        if 200 <= status < 300:
            return status, None, False
        if 300 <= status < 400:
            return status, f"HTTP {status}: redirects are not followed", False
        return status, f"HTTP {status}", False


_REFUSED = (f"{NOT_PUBLIC}: without BATCHD_WEBHOOK_ALLOWED_HOSTS webhooks go only to public "
            "addresses")


def failure_reason(exc: httpx.HTTPError) -> str:
    """What the tenant is told about a failed request: the kind of failure, in words that
    hold no address (a connection error's own text may name the IP it tried)."""
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__
        if isinstance(cause, ConnectFailed):
            return str(cause)  # written by pinned.py, without addresses
        tls = _find(exc, ssl.SSLError)
        if isinstance(tls, ssl.SSLCertVerificationError):
            return f"TLS: the certificate was refused ({tls.verify_message})"
        if tls is not None:
            return "TLS handshake failed"
        return f"could not connect ({os_reason(exc)})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the receiver closed the connection without a valid HTTP answer"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "the connection broke"
    return type(exc).__name__


def _find(exc: BaseException, kind: type[ssl.SSLError]) -> ssl.SSLError | None:
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return None
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
    return None


_MAX_ANSWER = 64 * 1024  # of a receiver's answer, read and dropped

