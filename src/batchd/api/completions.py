"""/v1/completions: legacy text completions (a raw prompt, no chat template), whole or as
server-sent events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.realtime import serve
from batchd.api.routing import AuthenticatedRoute
from batchd.openai.completions import CompletionRequest
from batchd.serving.completions import COMPLETIONS

router = APIRouter(prefix="/v1", tags=["completions"], route_class=AuthenticatedRoute)


@router.post("/completions", response_model=None)
async def completions(request: Request, caller: Caller,
                      body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
    return await serve(request, caller, COMPLETIONS, body)
