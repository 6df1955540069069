"""/v1/responses: text responses, whole or as the Responses API's server-sent events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.held import HeldStream
from batchd.api.realtime import engine_for, first_then_rest, run_now
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.engines.base import Delta, StreamEvent, Usage
from batchd.errors import BatchdError
from batchd.openai.responses import (
    ResponsesRequest,
    error_object,
    finished_status,
    in_responses_terms,
    new_ids,
    output_message,
    output_text,
    response_object,
    usage_object,
)
from batchd.operations import RESPONSES

router = APIRouter(prefix="/v1", tags=["responses"], route_class=AuthenticatedRoute)
log = logging.getLogger(__name__)


@router.post("/responses", response_model=None)
async def create_response(request: Request, caller: Caller,
                          body: ResponsesRequest) -> dict[str, Any] | StreamingResponse:
    chat = body.chat()  # refused before anything is held
    if not body.stream:
        return await run_now(request, caller, RESPONSES, body)
    svc = services(request)
    engine = engine_for(svc.registry, body.model, RESPONSES)
    release = svc.realtime.acquire(caller.key_id, 1)  # held until the stream ends
    with in_responses_terms():
        steps = await first_then_rest(request, lambda: engine.chat_stream(chat), release)
    return HeldStream(_events(steps, body, int(svc.clock.now())), release=release,
                      media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _events(steps: AsyncIterator[StreamEvent], body: ResponsesRequest,
                  created: int) -> AsyncIterator[bytes]:
    """The event sequence OpenAI sends for one text message, which the SDK's stream
    helpers assemble: created, in_progress, the item and its part opened, text deltas, the
    text, part and item done, then completed (or incomplete, or failed)."""
    response_id, item_id = new_ids()
    number = -1

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        number += 1
        payload = {"type": kind, "sequence_number": number, **fields}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def response(status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return response_object(body, response_id=response_id, created=created, status=status,
                               output=output, **extra)

    where = {"item_id": item_id, "output_index": 0}
    yield event("response.created", response=response("in_progress", []))
    yield event("response.in_progress", response=response("in_progress", []))
    yield event("response.output_item.added", output_index=0,
                item=output_message(item_id=item_id, text="", status="in_progress"))
    yield event("response.content_part.added", **where, content_index=0, part=output_text(""))
    pieces: list[str] = []
    finish, usage = "stop", Usage(prompt_tokens=0, completion_tokens=0)
    try:
        with in_responses_terms():
            async for step in steps:
                if isinstance(step, Delta):
                    if step.text:
                        pieces.append(step.text)
                        yield event("response.output_text.delta", **where, content_index=0,
                                    delta=step.text, logprobs=[])
                    if step.finish_reason:
                        finish = step.finish_reason
                else:
                    usage = step
    except Exception as exc:  # headers are sent: the failure is the stream's last event
        if not isinstance(exc, BatchdError):
            log.exception("a streamed response failed")
        error = error_object(exc)
        yield event("response.failed", response=response(
            "failed", [output_message(item_id=item_id, text="".join(pieces),
                                      status="incomplete")], error=error))
        return
    text, status = "".join(pieces), finished_status(finish)
    item = output_message(item_id=item_id, text=text, status=status)
    yield event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
    yield event("response.content_part.done", **where, content_index=0, part=output_text(text))
    yield event("response.output_item.done", output_index=0, item=item)
    yield event(f"response.{status}", response=response(
        status, [item], completed_at=created if status == "completed" else None,
        usage=usage_object(usage.prompt_tokens, usage.completion_tokens,
                           usage.cached_tokens)))
