"""/v1/batches: create, list, retrieve, cancel; and retry (a batchd extension)."""

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
    _wake_worker(request)
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
    _wake_worker(request)
    return batch


@router.post("/{batch_id}/retry", response_model=BatchObject)
async def retry_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    """**A batchd extension, not part of OpenAI's API.** Create a new batch from the lines of
    a finished batch that failed, were cancelled or expired (same custom_ids and bodies),
    with `metadata.retry_of` naming the original. It is validated and limited like any
    new batch. 409 while the batch has not finished; 400 when nothing is left to retry."""
    batch = await services(request).retries.retry(
        scope=caller.scope, batch_id=batch_id, tier=caller.tier_name,
        max_concurrent=caller.tier.max_concurrent_batches)
    _wake_worker(request)
    return batch


def _wake_worker(request: Request) -> None:
    """New or changed work: the embedded worker looks now instead of at its next poll."""
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
