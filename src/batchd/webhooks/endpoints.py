"""Webhook endpoints, as their owners manage them: register, list, read, rotate the secret,
enable again, delete, send a test event; and the deliveries to each. A key manages its owner's
endpoints; an admin key anyone's (`scope` None). The HTTP face is api/webhooks.py; the
deliveries themselves are sent by the worker (sender.py)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Sequence
from typing import Literal, get_args

from batchd import ids
from batchd.clock import Clock
from batchd.errors import InvalidRequest, NotFound, PermissionDenied, TooManyRequests
from batchd.limits.errors import TooManyTestEvents
from batchd.settings import Settings
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.store.roles import ApiStore
from batchd.webhooks.targets import allowed_hosts, check_url

MAX_ENDPOINTS = 20  # per owner: each terminal batch writes one delivery per endpoint
# Test events per minute: each is a delivery (retried like any other), so a key that sends
# them without end would fill the queue with its own work.
TESTS_PER_ENDPOINT = 5
TESTS_PER_OWNER = 20
EventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# Deliveries to one endpoint, each with its event (a module-level name: inside the class,
# `list` is the method).
Deliveries = list[tuple[WebhookDelivery, WebhookEvent]]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"No webhook endpoint with id '{endpoint_id}'.", param="endpoint_id")


class WebhookEndpoints:
    def __init__(self, *, store: ApiStore, clock: Clock, settings: Settings,
                 wake: Callable[[], None]) -> None:
        self.store, self.clock, self.settings = store, clock, settings
        self.wake = wake  # a test event is new work: this process's worker delivers it now

    async def create(self, *, caller: str, admin: bool, url: str,
                     events: Sequence[EventType] | None,
                     owner: str | None) -> WebhookEndpoint:
        """Register `url` for the batch events of `owner` (the caller's own by default;
        another's for admins only). The record holds the signing secret, to be shown once."""
        if owner is not None and owner != caller and not admin:
            raise PermissionDenied("Only admin keys register endpoints for another owner.",
                                   param="owner")
        url = check_url(url, allowed_hosts(self.settings.webhook_allowed_hosts))
        endpoint = WebhookEndpoint(id=ids.webhook_endpoint_id(), owner=owner or caller,
                                   url=url, events=list(events or EVENT_TYPES),
                                   secret=new_secret(), created_at=int(self.clock.now()))
        if not await self.store.insert_endpoint(endpoint, max_per_owner=MAX_ENDPOINTS):
            raise InvalidRequest(f"An owner may have at most {MAX_ENDPOINTS} webhook "
                                 "endpoints; delete one first.", code="too_many_endpoints",
                                 param="url")
        return endpoint

    async def list(self, *, scope: str | None) -> list[WebhookEndpoint]:
        return await self.store.list_endpoints(owner=scope)

    async def get(self, *, scope: str | None, endpoint_id: str) -> WebhookEndpoint:
        endpoint = await self.store.get_endpoint(endpoint_id, owner=scope)
        if endpoint is None:
            raise _not_found(endpoint_id)
        return endpoint

    async def delete(self, *, scope: str | None, endpoint_id: str) -> WebhookEndpoint:
        """Stop sending to it (its pending deliveries are dropped)."""
        return await self._update(scope, endpoint_id, deleted_at=int(self.clock.now()))

    async def rotate_secret(self, *, scope: str | None, endpoint_id: str) -> WebhookEndpoint:
        """A new signing secret, from the next delivery on (the old one stops working)."""
        return await self._update(scope, endpoint_id, secret=new_secret())

    async def enable(self, *, scope: str | None, endpoint_id: str) -> WebhookEndpoint:
        """Send to a disabled endpoint again (after its receiver was fixed)."""
        return await self._update(scope, endpoint_id, disabled_at=None, disabled_reason=None)

    async def _update(self, scope: str | None, endpoint_id: str,
                      **values: object) -> WebhookEndpoint:
        updated = await self.store.update_endpoint(endpoint_id, owner=scope, **values)
        if updated is None:
            raise _not_found(endpoint_id)
        return updated

    async def send_test(self, *, scope: str | None, endpoint_id: str) -> None:
        """Queue a `webhook.test` event to the endpoint, within the test-event limits."""
        endpoint = await self.get(scope=scope, endpoint_id=endpoint_id)
        if endpoint.disabled_at is not None:
            raise InvalidRequest("The endpoint is disabled; enable it first.",
                                 code="endpoint_disabled", param="endpoint_id")
        try:
            await self.store.record_test_event(endpoint, now=int(self.clock.now()),
                                               per_endpoint=TESTS_PER_ENDPOINT,
                                               per_owner=TESTS_PER_OWNER)
        except TooManyTestEvents as over:
            raise TooManyRequests(
                f"Rate limit reached for webhook test events: at most {over.limit} per "
                f"{over.scope} per minute. Try again in {over.retry_after} s.",
                code="rate_limit_exceeded", param="endpoint_id",
                headers={"retry-after": str(over.retry_after)}) from over
        self.wake()

    async def deliveries(self, *, scope: str | None, endpoint_id: str,
                         limit: int) -> Deliveries:
        """Recent deliveries to the endpoint, newest first, each with its event."""
        await self.get(scope=scope, endpoint_id=endpoint_id)
        return await self.store.list_deliveries(endpoint_id, limit=limit)
