"""/v1/batches: create, list, retrieve, cancel; and retry (a batchd extension)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.batches.partial import Frontier, output_page
from batchd.batches.schemas import BatchList, BatchObject, CreateBatchRequest
from batchd.errors import NotFound

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
    svc = services(request)
    batch = await svc.retries.retry(scope=caller.scope, batch_id=batch_id, tiers=svc.tiers)
    _wake_worker(request)
    return batch


@router.get("/{batch_id}/output", response_class=Response, responses={200: {
    "content": {"application/jsonl": {}},
    "description": "Output lines (JSONL); headers x-batchd-after and x-batchd-more."}})
async def batch_output_so_far(
    request: Request, caller: Caller, batch_id: str,
    after: Annotated[str | None, Query(max_length=65536, description=(
        "The x-batchd-after header of the previous page; none for the first."))] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """**A batchd extension, not part of OpenAI's API.** The output lines committed so far,
    while the batch runs and after it ends: a page of at least `limit` lines (pages end on a
    saved part, so one may hold a few more), each line once across pages and the same lines
    as the final output file. `x-batchd-after` continues from here; `x-batchd-more: false`
    means the batch has ended and every line has been read."""
    svc = services(request)
    batch = await svc.store.get_batch(batch_id, owner=caller.scope)
    if batch is None:
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
    page = await output_page(svc.store, svc.blobs, batch, Frontier.decode(after), limit=limit)
    return Response(b"".join(page.lines), media_type="application/jsonl", headers={
        "x-batchd-after": page.after.encode(), "x-batchd-more": str(page.more).lower(),
        "x-batchd-lines": str(len(page.lines))})


def _wake_worker(request: Request) -> None:
    """New or changed work: the embedded worker looks now instead of at its next poll."""
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake()
