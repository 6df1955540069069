"""POST /v1/files/{file_id}/estimate (a batchd extension): what a batch of this input file
would cost and when it would be done, before it is created."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=AuthenticatedRoute)


class EstimateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The batch's endpoint; by default the `url` of the file's first request.
    endpoint: str | None = None
    completion_window: str = "24h"  # the only one (anything else: a 400 naming it)


@router.post("/{file_id}/estimate")
async def estimate_file(request: Request, caller: Caller, file_id: str,
                        params: EstimateParams | None = None) -> dict[str, Any]:
    svc = services(request)
    record = await svc.files.get(owner=caller.scope, file_id=file_id)
    params = params or EstimateParams()
    # As batch creation counts them: the server's limit, or the caller's tier's if lower.
    limit = svc.settings.max_requests_per_batch
    max_requests = min(limit, caller.tier.max_batch_requests or limit)
    return await svc.estimates.estimate_file(record, endpoint=params.endpoint,
                                             max_requests=max_requests,
                                             completion_window=params.completion_window)
