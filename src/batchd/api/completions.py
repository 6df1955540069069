"""/v1/completions: legacy text completions (a raw prompt, no chat template), whole or as
server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.realtime import HeldStream, engine_for, run_now, stream_error
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.chat import SYSTEM_FINGERPRINT
from batchd.completions import (
    CompletionRequest,
    Prompt,
    completion_choice,
    usage_object,
)
from batchd.engines.base import Delta, Engine, Usage
from batchd.operations import COMPLETIONS, prompts_at_once

router = APIRouter(prefix="/v1", tags=["completions"], route_class=AuthenticatedRoute)


@router.post("/completions", response_model=None)
async def completions(request: Request, caller: Caller,
                      body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
    prompts = body.check()  # refused before anything is held
    slots = len(prompts) * body.n
    if not body.stream:
        return await run_now(request, caller, COMPLETIONS, body, slots=slots)
    svc = services(request)
    engine = engine_for(svc.registry, body.model, COMPLETIONS)
    release = svc.realtime.acquire(caller.key_id, slots)  # held until the stream ends
    return HeldStream(_sse(engine, body, prompts, int(svc.clock.now())), release=release,
                      media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _sse(engine: Engine, body: CompletionRequest, prompts: list[Prompt],
               created: int) -> AsyncIterator[bytes]:
    """`text_completion` chunks as OpenAI streams them: each choice's text in pieces (its
    `index` is prompt * n + choice, as in the whole object), `finish_reason` on its last
    piece, with `stream_options.include_usage` a last chunk with no choices and the usage,
    then `[DONE]`. Prompts stream side by side, a few at a time."""
    completion_id = ids.text_completion_id()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "text_completion", "created": created,
            "model": body.model, "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    events: asyncio.Queue[tuple[int, Delta | Usage] | Exception | None] = asyncio.Queue()
    room = asyncio.Semaphore(prompts_at_once(body.n))

    async def run(number: int, prompt: Prompt) -> None:
        async with room:
            try:
                async for event in engine.complete_stream(body.one(prompt)):
                    await events.put((number, event))
                await events.put(None)
            except Exception as exc:  # the stream reports it (a cancel is nobody's to see)
                await events.put(exc)

    tasks = [asyncio.ensure_future(run(p, prompt)) for p, prompt in enumerate(prompts)]
    usage = Usage(prompt_tokens=0, completion_tokens=0)
    try:
        if body.echo:  # the prompt comes first, as its own piece of each choice
            yield chunk([completion_choice(index=p * body.n + i, text=str(prompt),
                                           finish_reason=None, logprobs=None)
                         for p, prompt in enumerate(prompts) for i in range(body.n)])
        for _ in range(len(prompts)):
            while (item := await events.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                number, event = item
                if isinstance(event, Delta):
                    yield chunk([completion_choice(
                        index=number * body.n + event.index, text=event.text,
                        finish_reason=event.finish_reason, logprobs=None)])
                else:
                    usage = Usage(prompt_tokens=usage.prompt_tokens + event.prompt_tokens,
                                  completion_tokens=usage.completion_tokens
                                  + event.completion_tokens,
                                  cached_tokens=usage.cached_tokens + event.cached_tokens)
        if include_usage:
            yield chunk([], usage_object(usage.prompt_tokens, usage.completion_tokens,
                                         usage.cached_tokens))
    except Exception as exc:  # headers are sent: the error is the stream's last event
        yield stream_error(exc, "text completion")
    finally:
        for task in tasks:
            task.cancel()
    yield b"data: [DONE]\n\n"
