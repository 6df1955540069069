"""What every real-time serving endpoint shares over HTTP: the model looked up for the
endpoint, the caller's requests in flight counted, the answer given whole or streamed, and
the work given up when the client goes away. What the answer is, is `batchd.serving`'s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from batchd.api.auth import Principal
from batchd.api.held import HeldStream
from batchd.api.state import services
from batchd.api.usage_meter import UsageMeter
from batchd.engines.base import Priority
from batchd.serving.endpoints import find_engine
from batchd.serving.operation import Operation

T = TypeVar("T")


async def serve(request: Request, caller: Principal, operation: Operation,
                body: Any) -> dict[str, Any] | StreamingResponse:
    """Answer one real-time request of `operation`: its response object, or (with `stream`)
    its server-sent events. Everything the request can be refused for is refused before any
    header is sent, so a refusal is an HTTP error with its status, never a 200."""
    slots = operation.admit(body)  # refused before anything is held
    svc = services(request)
    engine = find_engine(svc.registry, body.model, operation)
    meter = UsageMeter(svc, caller, operation, body.model)
    created = int(svc.clock.now())
    if not getattr(body, "stream", False) or operation.stream is None:
        with svc.realtime.hold(caller.key_id, slots):
            produced = await unless_disconnected(
                request, operation.run(engine, body, created, Priority.REALTIME))
        # Counted before it is sent: an answer the store cannot count is not given (503).
        await meter.add(input_tokens=produced.input_tokens,
                        output_tokens=produced.output_tokens,
                        cached_tokens=produced.cached_tokens)
        return produced.body
    # Held until the last byte is sent; Starlette cancels the stream on disconnect.
    release = svc.realtime.acquire(caller.key_id, slots)
    try:
        events = await unless_disconnected(
            request, operation.stream(engine, body, created, meter.add_usage))
    except BaseException:
        release()
        raise
    return HeldStream(events, release=release, media_type="text/event-stream",
                      headers={"cache-control": "no-cache"})


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
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
