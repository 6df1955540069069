"""/v1/completions: legacy text completions (a raw prompt, no chat template), whole or as
server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from batchd import ids
from batchd.api.auth import Caller
from batchd.api.held import HeldStream
from batchd.api.realtime import engine_for, first_then_rest, run_now, stream_error
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.engines.base import Delta, Engine, Usage
from batchd.openai.base import SYSTEM_FINGERPRINT
from batchd.openai.completions import (
    CompletionRequest,
    Prompt,
    completion_choice,
    usage_object,
)
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
    # As chat and responses: an engine's refusal before the first event (a prompt too long
    # for the context) is the HTTP error it would be without stream, not a 200.
    merged = _merged(engine, body, prompts)
    events = await first_then_rest(request, lambda: merged, release)
    return HeldStream(_sse(events, body, prompts, int(svc.clock.now()), merged.aclose),
                      release=release, media_type="text/event-stream",
                      headers={"cache-control": "no-cache"})


async def _merged(engine: Engine, body: CompletionRequest,
                  prompts: list[Prompt]) -> AsyncGenerator[tuple[int, Delta | Usage], None]:
    """Every prompt's events as (prompt number, event), as they come: prompts run side by
    side, a few at a time. The first event is given only once each prompt of the first group
    has sent its own first event or ended, so that a refusal of any of them (the engine looks
    at each prompt as it starts) comes before the stream's headers; a prompt that starts
    later, or fails later, ends the stream with an error event."""
    events: asyncio.Queue[tuple[int, Delta | Usage | None] | Exception] = asyncio.Queue()
    room = asyncio.Semaphore(prompts_at_once(body.n))

    async def run(number: int, prompt: Prompt) -> None:
        async with room:
            try:
                async for event in engine.complete_stream(body.one(prompt)):
                    await events.put((number, event))
                await events.put((number, None))
            except Exception as exc:  # the stream reports it (a cancel is nobody's to see)
                await events.put(exc)

    tasks = [asyncio.ensure_future(run(p, prompt)) for p, prompt in enumerate(prompts)]
    waiting = set(range(min(len(prompts), prompts_at_once(body.n))))
    held: list[tuple[int, Delta | Usage]] = []
    ended = 0
    try:
        while ended < len(prompts):
            item = await events.get()
            if isinstance(item, Exception):
                raise item
            number, event = item
            waiting.discard(number)
            if event is None:
                ended += 1
            else:
                held.append((number, event))
            if not waiting:
                for kept in held:
                    yield kept
                held.clear()
        for kept in held:  # every prompt ended before the first group had spoken
            yield kept
    finally:
        for task in tasks:
            task.cancel()


async def _sse(events: AsyncIterator[tuple[int, Delta | Usage]], body: CompletionRequest,
               prompts: list[Prompt], created: int,
               stop: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    """`text_completion` chunks as OpenAI streams them: each choice's text in pieces (its
    `index` is prompt * n + choice, as in the whole object), `finish_reason` on its last
    piece, with `stream_options.include_usage` a last chunk with no choices and the usage,
    then `[DONE]`. However it ends, `stop` ends the prompts still running at once."""
    completion_id = ids.text_completion_id()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "text_completion", "created": created,
            "model": body.model, "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    usage = Usage(prompt_tokens=0, completion_tokens=0)
    try:
        if body.echo:  # the prompt comes first, as its own piece of each choice
            yield chunk([completion_choice(index=p * body.n + i, text=str(prompt),
                                           finish_reason=None, logprobs=None)
                         for p, prompt in enumerate(prompts) for i in range(body.n)])
        async for number, event in events:
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
        await stop()
    yield b"data: [DONE]\n\n"
