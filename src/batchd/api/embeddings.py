"""/v1/embeddings: vectors for texts or token ids, from a model that serves embeddings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.realtime import serve
from batchd.api.routing import AuthenticatedRoute
from batchd.openai.embeddings import EmbeddingRequest
from batchd.serving.embeddings import EMBEDDINGS

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=AuthenticatedRoute)


@router.post("/embeddings", response_model=None)
async def embeddings(request: Request, caller: Caller,
                     body: EmbeddingRequest) -> dict[str, Any] | StreamingResponse:
    return await serve(request, caller, EMBEDDINGS, body)
