"""/v1/chat/completions: real-time chat, plain or as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.held import HeldStream
from batchd.api.realtime import (
    engine_for,
    first_then_rest,
    run_now,
    stream_error,
)
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.engines.base import Delta, StreamEvent, Usage
from batchd.openai.base import SYSTEM_FINGERPRINT
from batchd.openai.chat import ChatCompletionRequest, usage_object
from batchd.operations import CHAT

router = APIRouter(prefix="/v1/chat", tags=["chat"], route_class=AuthenticatedRoute)


@router.post("/completions", response_model=None)
async def chat_completions(
    request: Request, caller: Caller, body: ChatCompletionRequest
) -> dict[str, Any] | StreamingResponse:
    if not body.stream:
        return await run_now(request, caller, CHAT, body, slots=body.n)
    svc = services(request)
    engine = engine_for(svc.registry, body.model, CHAT)
    # Held until the last byte is sent; Starlette cancels the stream on disconnect.
    release = svc.realtime.acquire(caller.key_id, body.n)
    events = await first_then_rest(request, lambda: engine.chat_stream(body), release)
    return HeldStream(_sse(events, body, int(svc.clock.now())), release=release,
                      media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _sse(events: AsyncIterator[StreamEvent], body: ChatCompletionRequest,
               created: int) -> AsyncIterator[bytes]:
    completion_id = ids.chat_completion_id()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": body.model, "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    for index in range(body.n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    try:
        async for event in events:
            if isinstance(event, Delta):
                delta = {"content": event.text} if event.text else {}
                logprobs = ({"content": event.logprobs, "refusal": None}
                            if event.logprobs is not None else None)
                yield chunk([{"index": event.index, "delta": delta, "logprobs": logprobs,
                              "finish_reason": event.finish_reason}])
            elif isinstance(event, Usage) and include_usage:
                yield chunk([], usage_object(event.prompt_tokens, event.completion_tokens,
                                             event.cached_tokens))
    except Exception as exc:  # headers are sent: the error is the stream's last event
        yield stream_error(exc, "chat completion")
    yield b"data: [DONE]\n\n"
