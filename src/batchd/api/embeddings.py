"""/v1/embeddings: vectors for texts or token ids, from a model that serves embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from batchd.api.auth import Caller
from batchd.api.realtime import run_now
from batchd.api.routing import AuthenticatedRoute
from batchd.openai.embeddings import EmbeddingRequest
from batchd.operations import EMBEDDINGS

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=AuthenticatedRoute)


@router.post("/embeddings")
async def embeddings(request: Request, caller: Caller, body: EmbeddingRequest) -> dict[str, Any]:
    body.inputs()  # refused before anything is held
    return await run_now(request, caller, EMBEDDINGS, body)
