"""/v1/responses: text responses, whole or as the Responses API's server-sent events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.realtime import serve
from batchd.api.routing import AuthenticatedRoute
from batchd.openai.responses import ResponsesRequest
from batchd.serving.responses import RESPONSES

router = APIRouter(prefix="/v1", tags=["responses"], route_class=AuthenticatedRoute)


@router.post("/responses", response_model=None)
async def create_response(request: Request, caller: Caller,
                          body: ResponsesRequest) -> dict[str, Any] | StreamingResponse:
    return await serve(request, caller, RESPONSES, body)
