"""/v1/completions: legacy text completions (a raw prompt, no chat template), answered whole
(`text_completion`) or streamed. A request may hold many prompts; they run side by side, a
few at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from batchd import ids
from batchd.engines.base import ChatResult, Delta, Engine, Priority, Usage
from batchd.openai.completions import (
    CompletionRequest,
    Prompt,
    completion_choice,
    legacy_logprobs,
    text_completion_object,
    usage_object,
)
from batchd.serving.operation import CountUsage, Operation, Produced, opened
from batchd.serving.prompts import text_tokens
from batchd.serving.sse import DONE, chunk_writer, error_event

CHOICES_AT_ONCE = 8  # of one request, in the engine at once
PROMPT_LEAD = 256  # characters of a prompt that group it (few-shot prompts share examples)

log = logging.getLogger(__name__)


def prompts_at_once(n: int) -> int:
    """How many of a request's prompts run at once: 8 choices' worth (one prompt when `n`
    alone is more), so a request of 8 prompts x `n: 16` is not 128 sequences in the engine at
    once, ahead of everyone else's."""
    return max(1, CHOICES_AT_ONCE // n)


def _estimate(body: dict[str, Any], request: CompletionRequest | None) -> int:
    prompt = body.get("prompt")
    if request is None:
        return text_tokens(prompt)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and \
        not all(isinstance(p, int) for p in prompt) else 1
    return text_tokens(prompt) + prompts * request.n * (request.max_tokens or 0)


def _prompt_lead(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    return prompt[:PROMPT_LEAD] if isinstance(prompt, str) else ""


def _admit(request: CompletionRequest) -> int:
    return len(request.check()) * request.n


async def _run(engine: Engine, request: CompletionRequest, created: int,
               priority: Priority) -> Produced:
    prompts = request.prompts()
    # A few prompts at a time: a request of 2,048 prompts must not put them all ahead of
    # everyone else's requests in the engine's queue.
    room = asyncio.Semaphore(prompts_at_once(request.n))

    async def one(prompt: Prompt) -> ChatResult:
        async with room:
            return await engine.complete(request.one(prompt), priority=priority)

    tasks = [asyncio.ensure_future(one(p)) for p in prompts]
    try:  # the first failure is the request's, unchanged (a 400 stays a 400)
        results: list[ChatResult] = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    choices = []
    for p, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        echoed = prompt if request.echo and isinstance(prompt, str) else ""
        start = len(prompt) if isinstance(prompt, str) else 0
        for i, choice in enumerate(result.choices):
            logprobs = choice.logprobs
            if logprobs is not None and "content" in logprobs:  # chat format: convert
                logprobs = legacy_logprobs(logprobs["content"] or [], offset=start)
            choices.append(completion_choice(index=p * request.n + i,
                                             text=echoed + choice.text,
                                             finish_reason=choice.finish_reason,
                                             logprobs=logprobs))
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    body = text_completion_object(model=request.model, created=created, choices=choices,
                                  prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, cached_tokens=cached)
    return Produced(body=body, input_tokens=prompt_tokens, output_tokens=completion_tokens,
                    cached_tokens=cached)


async def _stream(engine: Engine, request: CompletionRequest, created: int,
                  count: CountUsage) -> AsyncIterator[bytes]:
    prompts = request.prompts()
    # As chat and responses: an engine's refusal before the first event (a prompt too long
    # for the context) is the HTTP error it would be without stream, not a 200.
    merged = _merged(engine, request, prompts)
    try:
        events = await opened(merged)
    except BaseException:
        await merged.aclose()
        raise
    return _chunks(events, request, prompts, created, merged.aclose, count)


async def _merged(engine: Engine, request: CompletionRequest,
                  prompts: list[Prompt]) -> AsyncGenerator[tuple[int, Delta | Usage], None]:
    """Every prompt's events as (prompt number, event), as they come: prompts run side by
    side, a few at a time. The first event is given only once each prompt of the first group
    has sent its own first event or ended, so that a refusal of any of them (the engine looks
    at each prompt as it starts) comes before the stream's headers; a prompt that starts
    later, or fails later, ends the stream with an error event."""
    events: asyncio.Queue[tuple[int, Delta | Usage | None] | Exception] = asyncio.Queue()
    room = asyncio.Semaphore(prompts_at_once(request.n))

    async def run(number: int, prompt: Prompt) -> None:
        async with room:
            try:
                async for event in engine.complete_stream(request.one(prompt)):
                    await events.put((number, event))
                await events.put((number, None))
            except Exception as exc:  # the stream reports it (a cancel is nobody's to see)
                await events.put(exc)

    tasks = [asyncio.ensure_future(run(p, prompt)) for p, prompt in enumerate(prompts)]
    waiting = set(range(min(len(prompts), prompts_at_once(request.n))))
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


async def _chunks(events: AsyncIterator[tuple[int, Delta | Usage]], request: CompletionRequest,
                  prompts: list[Prompt], created: int, stop: Callable[[], Awaitable[None]],
                  count: CountUsage) -> AsyncIterator[bytes]:
    """`text_completion` chunks as OpenAI streams them: each choice's text in pieces (its
    `index` is prompt * n + choice, as in the whole object), `finish_reason` on its last
    piece, with `stream_options.include_usage` a last chunk with no choices and the usage,
    then `[DONE]`. However it ends, `stop` ends the prompts still running at once, and the
    usage of the prompts that finished is counted."""
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    chunk = chunk_writer(chunk_id=ids.text_completion_id(), object_type="text_completion",
                         created=created, model=request.model, include_usage=include_usage)
    usage = Usage(prompt_tokens=0, completion_tokens=0)
    counted = False
    try:
        if request.echo:  # the prompt comes first, as its own piece of each choice
            yield chunk([completion_choice(index=p * request.n + i, text=str(prompt),
                                           finish_reason=None, logprobs=None)
                         for p, prompt in enumerate(prompts) for i in range(request.n)])
        async for number, event in events:
            if isinstance(event, Delta):
                yield chunk([completion_choice(
                    index=number * request.n + event.index, text=event.text,
                    finish_reason=event.finish_reason, logprobs=None)])
            else:
                usage = Usage(prompt_tokens=usage.prompt_tokens + event.prompt_tokens,
                              completion_tokens=usage.completion_tokens
                              + event.completion_tokens,
                              cached_tokens=usage.cached_tokens + event.cached_tokens)
        counted = True
        await count(usage)
        if include_usage:
            yield chunk([], usage_object(usage.prompt_tokens, usage.completion_tokens,
                                         usage.cached_tokens))
    except Exception as exc:  # headers are sent: the error is the stream's last event
        if not counted and usage.prompt_tokens:  # what the prompts that finished cost
            try:
                await count(usage)
            except Exception as missed:  # the stream's own error goes on to the client
                log.warning("a failed stream's usage could not be counted: %s", missed)
        yield error_event(exc, "text completion")
    finally:
        await stop()
    yield DONE


COMPLETIONS = Operation(endpoint="/v1/completions", title="Completions", capability="chat",
                        required="prompt", request_type=CompletionRequest, cost=_estimate,
                        admit=_admit, run=_run, stream=_stream, prompt_lead=_prompt_lead)
