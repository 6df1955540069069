"""What every real-time generation endpoint shares: finding the engine that serves the
requested model for this endpoint, counting the caller's requests in flight, and giving up
the work when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from batchd.api.auth import Principal
from batchd.api.state import services
from batchd.engines.base import Engine, Priority
from batchd.engines.registry import ModelRegistry
from batchd.errors import BatchdError, InvalidRequest, NotFound, ServerError
from batchd.operations import Operation

T = TypeVar("T")
log = logging.getLogger(__name__)


def engine_for(registry: ModelRegistry, model: str, operation: Operation) -> Engine:
    """The engine serving `model` for `operation`'s endpoint; a 404 for an unknown model, a
    400 naming the endpoint for a model of another kind."""
    entry = registry.lookup(model)
    if entry is None:
        raise NotFound(f"The model '{model}' does not exist or you do not have access "
                       "to it.", code="model_not_found", param="model")
    if operation.capability not in entry.capabilities:
        raise InvalidRequest(operation.wrong_kind(model, entry.capabilities),
                             code="model_not_found", param="model")
    return registry.engine_for(model)


async def first_then_rest(request: Request, start: Callable[[], AsyncIterator[T]],
                          release: Callable[[], None]) -> AsyncIterator[T]:
    """The events `start()` opens, once the first has come. A failure before it (a prompt
    too long for the model, a parameter the engine refuses) is raised here, before any header
    is sent, so it is an HTTP error with its status and not a stream's last event; `release`
    then gives the caller's real-time slots back, as the stream would have at its end."""
    try:
        events = start()  # an engine may refuse the request here, before its first event
        first = await unless_disconnected(request, anext(events))
    except StopAsyncIteration:
        return events
    except BaseException:
        release()
        raise

    async def chained() -> AsyncIterator[T]:
        yield first
        async for item in events:
            yield item

    return chained()


def stream_error(exc: Exception, what: str) -> bytes:
    """A failure after a stream's headers went out, reported in-band as OpenAI does: a data
    event holding the error envelope. An internal failure's text is the log's, not the
    client's."""
    if not isinstance(exc, BatchdError):
        log.error("a streamed %s failed", what, exc_info=exc)
        exc = ServerError("The server had an error while processing your request.",
                          code="internal_error")
    return b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"


async def run_now(request: Request, caller: Principal, operation: Operation, body: Any, *,
                  slots: int = 1) -> dict[str, Any]:
    """Run one real-time request of `operation` and return its response object."""
    svc = services(request)
    engine = engine_for(svc.registry, body.model, operation)
    created = int(svc.clock.now())
    with svc.realtime.hold(caller.key_id, slots):
        produced = await unless_disconnected(
            request, operation.run(engine, body, created, Priority.REALTIME))
    return produced.body


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
