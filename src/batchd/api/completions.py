"""/v1/completions: legacy text completions (a raw prompt, no chat template)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from batchd.api.auth import Caller
from batchd.api.realtime import run_now
from batchd.api.routing import AuthenticatedRoute
from batchd.completions import CompletionRequest
from batchd.operations import COMPLETIONS

router = APIRouter(prefix="/v1", tags=["completions"], route_class=AuthenticatedRoute)


@router.post("/completions")
async def completions(request: Request, caller: Caller,
                      body: CompletionRequest) -> dict[str, Any]:
    prompts = body.check()  # refused before anything is held
    return await run_now(request, caller, COMPLETIONS, body, slots=len(prompts) * body.n)
