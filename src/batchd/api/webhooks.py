"""/admin/webhooks: where batch events are sent (a batchd extension; OpenAI configures these
in its dashboard). A key manages its owner's endpoints; an admin key anyone's."""

from __future__ import annotations

import base64
import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.errors import InvalidRequest, NotFound, PermissionDenied, TooManyRequests
from batchd.store.records import WebhookEndpoint
from batchd.store.webhooks import TooManyTestEvents
from batchd.webhooks.targets import allowed_hosts, check_url

router = APIRouter(prefix="/admin/webhooks", tags=["webhooks"],
                   route_class=AuthenticatedRoute)

MAX_ENDPOINTS = 20  # per owner: each terminal batch writes one delivery per endpoint
# Test events per minute: each is a delivery (retried like any other), so a key that sends
# them without end would fill the queue with its own work.
TESTS_PER_ENDPOINT = 5
TESTS_PER_OWNER = 20
EVENT_TYPES = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
EventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


class EndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    owner: str
    created_at: int
    status: Literal["enabled", "disabled"]
    disabled_at: int | None
    disabled_reason: str | None

    @classmethod
    def of(cls, e: WebhookEndpoint) -> EndpointObject:
        return cls(id=e.id, url=e.url, events=e.events, owner=e.owner, created_at=e.created_at,
                   status="disabled" if e.disabled_at else "enabled",
                   disabled_at=e.disabled_at, disabled_reason=e.disabled_reason)


class EndpointWithSecret(EndpointObject):
    secret: str = Field(description="The signing secret (whsec_…): shown only in this answer.")


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EndpointObject]


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1,
                                           description="Default: every batch event.")
    owner: str | None = Field(default=None, min_length=1, max_length=200,
                              description="Admins only: whose batches' events.")


class Attempt(BaseModel):
    at: int
    status: int | None
    error: str | None


class DeliveryObject(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    data: dict[str, str]
    state: Literal["pending", "delivered", "failed"]
    attempts: list[Attempt]
    next_attempt_at: int | None


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryObject]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@router.post("", response_model=EndpointWithSecret)
async def create_endpoint(request: Request, caller: Caller,
                          body: CreateEndpoint) -> EndpointWithSecret:
    """Register a URL for batch events; the answer holds its signing secret, once."""
    svc = services(request)
    if body.owner is not None and body.owner != caller.owner and not caller.is_admin:
        raise PermissionDenied("Only admin keys register endpoints for another owner.",
                               param="owner")
    url = check_url(body.url, allowed_hosts(svc.settings.webhook_allowed_hosts))
    endpoint = WebhookEndpoint(id=ids.webhook_endpoint_id(), owner=body.owner or caller.owner,
                               url=url, events=list(body.events or EVENT_TYPES),
                               secret=new_secret(), created_at=int(svc.clock.now()))
    if not await svc.store.insert_endpoint(endpoint, max_per_owner=MAX_ENDPOINTS):
        raise InvalidRequest(f"An owner may have at most {MAX_ENDPOINTS} webhook endpoints; "
                             "delete one first.", code="too_many_endpoints", param="url")
    return EndpointWithSecret(**EndpointObject.of(endpoint).model_dump(),
                              secret=endpoint.secret)


@router.get("", response_model=EndpointList)
async def list_endpoints(request: Request, caller: Caller) -> EndpointList:
    endpoints = await services(request).store.list_endpoints(owner=caller.scope)
    return EndpointList(data=[EndpointObject.of(e) for e in endpoints])


async def _endpoint(request: Request, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await services(request).store.get_endpoint(endpoint_id, owner=caller.scope)
    if endpoint is None:
        raise NotFound(f"No webhook endpoint with id '{endpoint_id}'.", param="endpoint_id")
    return endpoint


@router.get("/{endpoint_id}", response_model=EndpointObject)
async def get_endpoint(request: Request, caller: Caller, endpoint_id: str) -> EndpointObject:
    return EndpointObject.of(await _endpoint(request, caller, endpoint_id))


@router.delete("/{endpoint_id}", response_model=EndpointObject)
async def delete_endpoint(request: Request, caller: Caller,
                          endpoint_id: str) -> EndpointObject:
    """Stop sending to this endpoint (its pending deliveries are dropped)."""
    svc = services(request)
    deleted = await svc.store.update_endpoint(endpoint_id, owner=caller.scope,
                                              deleted_at=int(svc.clock.now()))
    if deleted is None:
        raise NotFound(f"No webhook endpoint with id '{endpoint_id}'.", param="endpoint_id")
    return EndpointObject.of(deleted)


@router.post("/{endpoint_id}/rotate", response_model=EndpointWithSecret)
async def rotate_secret(request: Request, caller: Caller,
                        endpoint_id: str) -> EndpointWithSecret:
    """A new signing secret, from the next delivery on (the old one stops working)."""
    await _endpoint(request, caller, endpoint_id)
    secret = new_secret()
    updated = await services(request).store.update_endpoint(endpoint_id, owner=caller.scope,
                                                            secret=secret)
    assert updated is not None
    return EndpointWithSecret(**EndpointObject.of(updated).model_dump(), secret=secret)


@router.post("/{endpoint_id}/enable", response_model=EndpointObject)
async def enable_endpoint(request: Request, caller: Caller,
                          endpoint_id: str) -> EndpointObject:
    """Send to a disabled endpoint again (after its receiver was fixed)."""
    await _endpoint(request, caller, endpoint_id)
    updated = await services(request).store.update_endpoint(
        endpoint_id, owner=caller.scope, disabled_at=None, disabled_reason=None)
    assert updated is not None
    return EndpointObject.of(updated)


@router.post("/{endpoint_id}/test", response_model=DeliveryList)
async def send_test_event(request: Request, caller: Caller,
                          endpoint_id: str) -> DeliveryList:
    """Queue a `webhook.test` event to this endpoint; its delivery shows in /deliveries."""
    endpoint = await _endpoint(request, caller, endpoint_id)
    if endpoint.disabled_at is not None:
        raise InvalidRequest("The endpoint is disabled; enable it first.",
                             code="endpoint_disabled", param="endpoint_id")
    svc = services(request)
    try:
        await svc.store.record_test_event(endpoint, now=int(svc.clock.now()),
                                          per_endpoint=TESTS_PER_ENDPOINT,
                                          per_owner=TESTS_PER_OWNER)
    except TooManyTestEvents as over:
        raise TooManyRequests(
            f"Rate limit reached for webhook test events: at most {over.limit} per "
            f"{over.scope} per minute. Try again in {over.retry_after} s.",
            code="rate_limit_exceeded", param="endpoint_id",
            headers={"retry-after": str(over.retry_after)}) from over
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
    return await list_deliveries(request, caller, endpoint_id, limit=1)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(request: Request, caller: Caller, endpoint_id: str,
                          limit: Annotated[int, Query(ge=1, le=100)] = 20) -> DeliveryList:
    """Recent deliveries to this endpoint, newest first, with every attempt."""
    await _endpoint(request, caller, endpoint_id)
    rows = await services(request).store.list_deliveries(endpoint_id, limit=limit)
    return DeliveryList(data=[DeliveryObject(
        id=d.id, event_id=e.id, event_type=e.type,
        data={k: str(v) for k, v in e.data.items()}, state=d.state,
        attempts=[Attempt(**a) for a in d.history],
        next_attempt_at=int(d.next_attempt_at) if d.state == "pending" else None)
        for d, e in rows])
