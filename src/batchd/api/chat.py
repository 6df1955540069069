"""/v1/chat/completions: real-time chat, plain or as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.state import services
from batchd.chat import ChatCompletionRequest, choice_object, completion_object, usage_object
from batchd.engines.base import Delta, Engine, Usage
from batchd.errors import NotFound

router = APIRouter(prefix="/v1/chat", tags=["chat"])


@router.post("/completions", response_model=None)
async def chat_completions(
    request: Request, caller: Caller, body: ChatCompletionRequest
) -> dict[str, Any] | StreamingResponse:
    svc = services(request)
    if body.model not in svc.registry:
        raise NotFound(f"The model '{body.model}' does not exist or you do not have access "
                       "to it.", code="model_not_found", param="model")
    engine = svc.registry.engine_for(body.model)
    created = int(svc.clock.now())
    if body.stream:
        return StreamingResponse(_sse(engine, body, created), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    result = await engine.chat(body)
    return completion_object(
        model=body.model, created=created,
        choices=[choice_object(index=i, text=c.text, finish_reason=c.finish_reason,
                               logprobs=c.logprobs) for i, c in enumerate(result.choices)],
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
    )


async def _sse(engine: Engine, body: ChatCompletionRequest, created: int) -> AsyncIterator[bytes]:
    completion_id = ids.chat_completion_id()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": body.model, "system_fingerprint": None, "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    for index in range(body.n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    try:
        async for event in engine.chat_stream(body):
            if isinstance(event, Delta):
                delta = {"content": event.text} if event.text else {}
                yield chunk([{"index": event.index, "delta": delta, "logprobs": None,
                              "finish_reason": event.finish_reason}])
            elif isinstance(event, Usage) and include_usage:
                yield chunk([], usage_object(event.prompt_tokens, event.completion_tokens,
                                             event.cached_tokens))
    except Exception as exc:  # headers are sent: report in-band, as OpenAI does
        error = {"error": {"message": str(exc), "type": "server_error", "param": None,
                           "code": getattr(exc, "code", None)}}
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    yield b"data: [DONE]\n\n"
