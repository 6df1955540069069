"""POST /v1/files/{file_id}/estimate (a batchd extension): what a batch of this input file
would cost and when it would be done, before it is created."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.limits.tiers import batch_request_limit

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=AuthenticatedRoute)


class EstimateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The batch's endpoint; by default the `url` of the file's first request.
    endpoint: str | None = None
    completion_window: str = "24h"  # as a batch's (another: a 400 naming it)


@router.post("/{file_id}/estimate")
async def estimate_file(request: Request, caller: Caller, file_id: str,
                        params: EstimateParams | None = None) -> dict[str, Any]:
    svc = services(request)
    record = await svc.files.get(owner=caller.scope, file_id=file_id)
    params = params or EstimateParams()
    return await svc.estimates.estimate_file(
        record, endpoint=params.endpoint,
        max_requests=batch_request_limit(caller.tier, svc.settings.max_requests_per_batch),
        completion_window=params.completion_window)
