"""/admin/webhooks: where batch events are sent (a batchd extension; OpenAI configures these
in its dashboard). A key manages its owner's endpoints; an admin key anyone's
(webhooks/endpoints.py holds the rules)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.webhooks.endpoints import EventType

router = APIRouter(prefix="/admin/webhooks", tags=["webhooks"],
                   route_class=AuthenticatedRoute)


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

    @classmethod
    def of_new(cls, e: WebhookEndpoint) -> EndpointWithSecret:
        """A new endpoint or secret: the one answer that shows it."""
        return cls(**EndpointObject.of(e).model_dump(), secret=e.secret)


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

    @classmethod
    def of(cls, d: WebhookDelivery, e: WebhookEvent) -> DeliveryObject:
        return cls(id=d.id, event_id=e.id, event_type=e.type,
                   data={k: str(v) for k, v in e.data.items()}, state=d.state,
                   attempts=[Attempt(**a) for a in d.history],
                   next_attempt_at=int(d.next_attempt_at) if d.state == "pending" else None)


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryObject]


@router.post("", response_model=EndpointWithSecret)
async def create_endpoint(request: Request, caller: Caller,
                          body: CreateEndpoint) -> EndpointWithSecret:
    """Register a URL for batch events; the answer holds its signing secret, once."""
    endpoint = await services(request).webhooks.create(
        caller=caller.owner, admin=caller.is_admin, url=body.url, events=body.events,
        owner=body.owner)
    return EndpointWithSecret.of_new(endpoint)


@router.get("", response_model=EndpointList)
async def list_endpoints(request: Request, caller: Caller) -> EndpointList:
    endpoints = await services(request).webhooks.list(scope=caller.scope)
    return EndpointList(data=[EndpointObject.of(e) for e in endpoints])


@router.get("/{endpoint_id}", response_model=EndpointObject)
async def get_endpoint(request: Request, caller: Caller, endpoint_id: str) -> EndpointObject:
    return EndpointObject.of(await services(request).webhooks.get(
        scope=caller.scope, endpoint_id=endpoint_id))


@router.delete("/{endpoint_id}", response_model=EndpointObject)
async def delete_endpoint(request: Request, caller: Caller,
                          endpoint_id: str) -> EndpointObject:
    """Stop sending to this endpoint (its pending deliveries are dropped)."""
    return EndpointObject.of(await services(request).webhooks.delete(
        scope=caller.scope, endpoint_id=endpoint_id))


@router.post("/{endpoint_id}/rotate", response_model=EndpointWithSecret)
async def rotate_secret(request: Request, caller: Caller,
                        endpoint_id: str) -> EndpointWithSecret:
    """A new signing secret, from the next delivery on (the old one stops working)."""
    return EndpointWithSecret.of_new(await services(request).webhooks.rotate_secret(
        scope=caller.scope, endpoint_id=endpoint_id))


@router.post("/{endpoint_id}/enable", response_model=EndpointObject)
async def enable_endpoint(request: Request, caller: Caller,
                          endpoint_id: str) -> EndpointObject:
    """Send to a disabled endpoint again (after its receiver was fixed)."""
    return EndpointObject.of(await services(request).webhooks.enable(
        scope=caller.scope, endpoint_id=endpoint_id))


@router.post("/{endpoint_id}/test", response_model=DeliveryList)
async def send_test_event(request: Request, caller: Caller,
                          endpoint_id: str) -> DeliveryList:
    """Queue a `webhook.test` event to this endpoint; its delivery shows in /deliveries."""
    await services(request).webhooks.send_test(scope=caller.scope, endpoint_id=endpoint_id)
    return await list_deliveries(request, caller, endpoint_id, limit=1)


@router.get("/{endpoint_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(request: Request, caller: Caller, endpoint_id: str,
                          limit: Annotated[int, Query(ge=1, le=100)] = 20) -> DeliveryList:
    """Recent deliveries to this endpoint, newest first, with every attempt."""
    rows = await services(request).webhooks.deliveries(scope=caller.scope,
                                                        endpoint_id=endpoint_id, limit=limit)
    return DeliveryList(data=[DeliveryObject.of(d, e) for d, e in rows])
