"""Delivering webhook events: signed as OpenAI signs them (Standard Webhooks), retried with
growing waits for about a day, the endpoint disabled (with the reason) when that fails.

Runs as its own loop in every worker, apart from the batch work: a slow or hanging receiver
holds only its own delivery, for at most `BATCHD_WEBHOOK_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from standardwebhooks import Webhook

from batchd import __version__, metrics
from batchd.clock import Clock
from batchd.settings import Settings
from batchd.store.metadata import MetadataStore
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.webhooks.targets import allowed_hosts, host_allowed

log = logging.getLogger(__name__)

# Waits between attempts, in units of BATCHD_WEBHOOK_FIRST_RETRY_SECONDS (5 s by default:
# 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, 8 h; about 23.6 hours in all).
BACKOFF = (1, 6, 24, 120, 360, 720, 1440, 2880, 5760, 5760)
PER_STEP = 16  # deliveries sent at once by one worker


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
    def __init__(self, *, store: MetadataStore, clock: Clock, settings: Settings) -> None:
        self.store, self.clock, self.settings = store, clock, settings
        self._http: httpx.AsyncClient | None = None  # opened at the first delivery

    @property
    def allowed(self) -> tuple[str, ...] | None:
        return allowed_hosts(self.settings.webhook_allowed_hosts)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # Redirects are never followed: the receiver is the URL that was registered.
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                           timeout=self.settings.webhook_timeout_seconds)
        return self._http

    async def step(self) -> bool:
        """Send the deliveries that are due (up to PER_STEP at once); whether there were any."""
        lease = self.settings.webhook_timeout_seconds * 3 + 30
        due = await self.store.claim_deliveries(now=self.clock.now(), lease_seconds=lease,
                                                limit=PER_STEP)
        await asyncio.gather(*(self._deliver(*claim) for claim in due))
        return bool(due)

    async def _deliver(self, delivery: WebhookDelivery, event: WebhookEvent,
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
        URL that is not one)."""
        if endpoint.deleted_at is not None or endpoint.disabled_at is not None:
            return None, "endpoint disabled", False
        host = urlsplit(endpoint.url).hostname or ""
        if not host_allowed(host, self.allowed):
            return None, f"host '{host}' is not on the allow-list", True
        if self.allowed is None:  # no allow-list: never an address inside the network
            refused = await internal_address(host)
            if refused:
                return None, f"host '{host}' resolves to {refused}: not on the allow-list", True
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
        except TimeoutError:
            return None, f"no answer within {limit:g} s", False
        except httpx.InvalidURL as exc:
            return None, f"invalid URL ({exc})", True
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {str(exc)[:200] or 'connection failed'}", False
        except Exception as exc:  # never let one delivery stop the others
            log.warning("webhook delivery %s failed: %r", event.id, exc)
            return None, f"{type(exc).__name__}", False
        if 200 <= status < 300:
            return status, None, False
        if 300 <= status < 400:
            return status, f"HTTP {status}: redirects are not followed", False
        return status, f"HTTP {status}", False


_MAX_ANSWER = 64 * 1024  # of a receiver's answer, read and dropped


async def internal_address(host: str) -> str | None:
    """The first address of `host` that is loopback, private, link-local or otherwise not
    public (None: all are public; a name that does not resolve is left to the request)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            return str(address)
    return None
