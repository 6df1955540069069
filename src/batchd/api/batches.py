"""/v1/batches: create, list, retrieve, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.batches.schemas import BatchList, BatchObject, CreateBatchRequest

router = APIRouter(prefix="/v1/batches", tags=["batches"], route_class=AuthenticatedRoute)


@router.post("", response_model=BatchObject)
async def create_batch(request: Request, caller: Caller, body: CreateBatchRequest) -> BatchObject:
    batch = await services(request).batches.create(
        owner=caller.owner, request=body, tier=caller.tier_name,
        max_concurrent=caller.tier.max_concurrent_batches)
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
    return batch


@router.get("", response_model=BatchList)
async def list_batches(
    request: Request,
    caller: Caller,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    data, has_more = await services(request).batches.list(owner=caller.scope, after=after,
                                                          limit=limit)
    return BatchList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None)


@router.get("/{batch_id}", response_model=BatchObject)
async def retrieve_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    return await services(request).batches.get(owner=caller.scope, batch_id=batch_id)


@router.post("/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    batch = await services(request).batches.cancel(owner=caller.scope, batch_id=batch_id)
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
    return batch
