"""/v1/batches: create, list, retrieve, cancel; and retry (a batchd extension)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from batchd import read_budget
from batchd.api.auth import Caller
from batchd.api.held import HeldResponse
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.batches.partial import Frontier
from batchd.openai.batches import BatchList, BatchObject, CreateBatchRequest
from batchd.read_budget import MIB, PIECE_BYTES

router = APIRouter(prefix="/v1/batches", tags=["batches"], route_class=AuthenticatedRoute)

# What one /output page holds: its lines up to OUTPUT_PAGE_BYTES; reserved from the
# process-wide read budget for those lines, the response's copy of them, the line being read
# and the piece it is read from.
OUTPUT_PAGE_BYTES = 8 * MIB
OUTPUT_RESERVED = 3 * OUTPUT_PAGE_BYTES + PIECE_BYTES


@router.post("", response_model=BatchObject)
async def create_batch(request: Request, caller: Caller, body: CreateBatchRequest) -> BatchObject:
    return await services(request).batches.create(
        owner=caller.owner, request=body, tier=caller.tier_name, key_id=caller.key_id,
        max_concurrent=caller.tier.max_concurrent_batches)


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
    return await services(request).batches.cancel(owner=caller.scope, batch_id=batch_id)


@router.post("/{batch_id}/retry", response_model=BatchObject)
async def retry_batch(request: Request, caller: Caller, batch_id: str) -> BatchObject:
    """**A batchd extension, not part of OpenAI's API.** Create a new batch from the lines of
    a finished batch that failed, were cancelled or expired (same custom_ids and bodies),
    with `metadata.retry_of` naming the original. It is validated and limited like any
    new batch. 409 while the batch has not finished; 400 when nothing is left to retry."""
    svc = services(request)
    return await svc.retries.retry(scope=caller.scope, batch_id=batch_id, tiers=svc.tiers)


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
    saved part, so one may hold a few more), or fewer once the page holds 8 MiB (a line
    longer than that comes alone), each line once across pages and the same lines as the
    final output file. `x-batchd-after` continues from here; `x-batchd-more: false` means
    the batch has ended and every line has been read. 503 `server_busy` when the server
    holds as much for other reads as it may."""
    batches = services(request).batches
    batch = await batches.record(owner=caller.scope, batch_id=batch_id)
    frontier = Frontier.decode(after)
    held = await read_budget.READS.reserve(OUTPUT_RESERVED, owner=caller.owner)
    try:
        page = await batches.output_page(batch, frontier, limit=limit, held=held,
                                         budget=OUTPUT_PAGE_BYTES)
        body = b"".join(page.lines)
    except BaseException:
        held.release()
        raise
    count = len(page.lines)
    page.lines.clear()  # the body holds them now
    return HeldResponse(body, release=held.release, media_type="application/jsonl", headers={
        "x-batchd-after": page.after.encode(), "x-batchd-more": str(page.more).lower(),
        "x-batchd-lines": str(count)})

