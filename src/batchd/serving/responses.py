"""/v1/responses: a text response answered whole (`response`) or as the Responses API's
named events. The request runs on the engine as a chat."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from batchd.engines.base import Delta, Engine, Priority, StreamEvent, Usage
from batchd.errors import BatchdError
from batchd.openai.responses import (
    MIN_OUTPUT_TOKENS,
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
from batchd.serving.operation import (
    DEFAULT_OUTPUT_TOKENS,
    CountUsage,
    Operation,
    Produced,
    opened,
)
from batchd.serving.prompts import first_text, plain_count, text_tokens
from batchd.serving.sse import named_event

log = logging.getLogger(__name__)


def _prompt_estimate(body: dict[str, Any]) -> int:
    return text_tokens(body.get("instructions")) + text_tokens(body.get("input"))


def _estimate(body: dict[str, Any], request: ResponsesRequest | None) -> int:
    output = (request.max_output_tokens or DEFAULT_OUTPUT_TOKENS) if request else 0
    return _prompt_estimate(body) + output


def _quick_estimate(body: dict[str, Any]) -> int | None:
    """`_estimate` from a plain `max_output_tokens`, as ResponsesRequest would read it."""
    most = body.get("max_output_tokens")
    if most is not None and not plain_count(most, least=MIN_OUTPUT_TOKENS):
        return None
    return _prompt_estimate(body) + (most or DEFAULT_OUTPUT_TOKENS)


def _prompt_lead(body: dict[str, Any]) -> str:
    instructions = body.get("instructions")
    return instructions if isinstance(instructions, str) and instructions \
        else first_text(body.get("input"))


def _admit(request: ResponsesRequest) -> int:
    request.chat()  # what the chat it becomes would refuse
    return 1


async def _run(engine: Engine, request: ResponsesRequest, created: int,
               priority: Priority) -> Produced:
    with in_responses_terms():
        result = await engine.chat(request.chat(), priority=priority)
    choice = result.choices[0]
    status = finished_status(choice.finish_reason)
    response_id, message_id = new_ids()
    body = response_object(
        request, response_id=response_id, created=created, status=status,
        completed_at=created if status == "completed" else None,
        output=[output_message(item_id=message_id, text=choice.text, status=status)],
        usage=usage_object(result.prompt_tokens, result.completion_tokens,
                           result.cached_tokens, result.reasoning_tokens))
    return Produced(body=body, input_tokens=result.prompt_tokens,
                    output_tokens=result.completion_tokens, cached_tokens=result.cached_tokens)


async def _stream(engine: Engine, request: ResponsesRequest, created: int,
                  count: CountUsage) -> AsyncIterator[bytes]:
    chat = request.chat()
    with in_responses_terms():
        steps = await opened(engine.chat_stream(chat))
    return _events(steps, request, created, count)


async def _events(steps: AsyncIterator[StreamEvent], request: ResponsesRequest,
                  created: int, count: CountUsage) -> AsyncIterator[bytes]:
    """The event sequence OpenAI sends for one text message, which the SDK's stream
    helpers assemble: created, in_progress, the item and its part opened, text deltas, the
    text, part and item done, then completed (or incomplete, or failed)."""
    response_id, item_id = new_ids()
    number = -1

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        number += 1
        return named_event(kind, {"type": kind, "sequence_number": number, **fields})

    def response(status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return response_object(request, response_id=response_id, created=created,
                               status=status, output=output, **extra)

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
                    await count(usage)
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
                           usage.cached_tokens, usage.reasoning_tokens)))


RESPONSES = Operation(endpoint="/v1/responses", title="Responses", capability="chat",
                      required="input", request_type=ResponsesRequest, cost=_estimate,
                      admit=_admit, run=_run, stream=_stream, prompt_lead=_prompt_lead,
                      quick_cost=_quick_estimate,
                      counted=lambda request: request.chat())
