"""/v1/chat/completions: real-time chat, whole or as server-sent events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.realtime import serve
from batchd.api.routing import AuthenticatedRoute
from batchd.openai.chat import ChatCompletionRequest
from batchd.serving.chat import CHAT

router = APIRouter(prefix="/v1/chat", tags=["chat"], route_class=AuthenticatedRoute)


@router.post("/completions", response_model=None)
async def chat_completions(request: Request, caller: Caller,
                           body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
    return await serve(request, caller, CHAT, body)
