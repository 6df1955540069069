"""/v1/chat/completions: real-time chat, plain or as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.chat import (
    SYSTEM_FINGERPRINT,
    ChatCompletionRequest,
    choice_object,
    completion_object,
    usage_object,
)
from batchd.engines.base import Delta, Engine, Usage
from batchd.errors import BatchdError, NotFound, ServerError

router = APIRouter(prefix="/v1/chat", tags=["chat"], route_class=AuthenticatedRoute)
T = TypeVar("T")
log = logging.getLogger(__name__)


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
        # Held until the last byte is sent; Starlette cancels the stream on disconnect.
        release = svc.realtime.acquire(caller.key_id, body.n)
        return _HeldStream(_sse(engine, body, created), release=release,
                           media_type="text/event-stream", headers={"cache-control": "no-cache"})
    with svc.realtime.hold(caller.key_id, body.n):
        result = await _unless_disconnected(request, engine.chat(body))
    return completion_object(
        model=body.model, created=created,
        choices=[choice_object(index=i, text=c.text, finish_reason=c.finish_reason,
                               logprobs=c.logprobs) for i, c in enumerate(result.choices)],
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens,
    )


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client goes away first, `work` is cancelled (an abandoned
    generation would otherwise hold engine slots other callers are waiting for)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _HeldStream(StreamingResponse):
    """A stream that gives back what its caller held once it ends, however it ends."""

    def __init__(self, content: AsyncIterator[bytes], *, release: Callable[[], None],
                 media_type: str, headers: dict[str, str]) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _sse(engine: Engine, body: ChatCompletionRequest, created: int) -> AsyncIterator[bytes]:
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
        async for event in engine.chat_stream(body):
            if isinstance(event, Delta):
                delta = {"content": event.text} if event.text else {}
                yield chunk([{"index": event.index, "delta": delta, "logprobs": None,
                              "finish_reason": event.finish_reason}])
            elif isinstance(event, Usage) and include_usage:
                yield chunk([], usage_object(event.prompt_tokens, event.completion_tokens,
                                             event.cached_tokens))
    except BatchdError as exc:  # headers are sent: report in-band, as OpenAI does
        yield b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"
    except Exception:  # an internal failure's text is the log's, not the client's
        log.exception("a streamed chat completion failed")
        error = ServerError("The server had an error while processing your request.",
                            code="internal_error")
        yield b"data: " + orjson.dumps(error.envelope()) + b"\n\n"
    yield b"data: [DONE]\n\n"
