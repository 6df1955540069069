"""/v1/chat/completions: a chat answered whole (`chat.completion`) or streamed
(`chat.completion.chunk` events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from batchd import ids
from batchd.engines.base import Choice, Delta, Engine, Priority, StreamEvent, Usage
from batchd.openai.chat import (
    ChatCompletionRequest,
    choice_object,
    completion_object,
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
from batchd.serving.sse import DONE, chunk_writer, error_event


def estimate_prompt_tokens(messages: object) -> int:
    """Chat messages' estimate: their text plus a few tokens each."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if type(message) is dict else None
        if type(content) is str:  # the common shape, as text_tokens counts it
            total += 5 + len(content) // 4
        else:
            total += 4 + text_tokens(message)
    return total


def _cost(body: dict[str, Any], n: int, limit: int | None) -> int:
    """The prompt's estimate and the most output `n` choices of at most `limit` may make."""
    return estimate_prompt_tokens(body.get("messages")) + n * (limit or DEFAULT_OUTPUT_TOKENS)


def _estimate(body: dict[str, Any], request: ChatCompletionRequest | None) -> int:
    if request is None:
        return estimate_prompt_tokens(body.get("messages"))
    return _cost(body, request.n, request.output_limit)


def _quick_estimate(body: dict[str, Any]) -> int | None:
    """`_estimate` from plain fields, as ChatCompletionRequest would read them."""
    n = body.get("n", 1)
    newer, older = body.get("max_completion_tokens"), body.get("max_tokens")
    if not (plain_count(n, least=1, most=16)
            and (newer is None or plain_count(newer, least=1))
            and (older is None or plain_count(older, least=1))):
        return None
    return _cost(body, n, newer or older)  # output_limit's own reading


def _admit(request: ChatCompletionRequest) -> int:
    request.check()
    return request.n


async def _run(engine: Engine, request: ChatCompletionRequest, created: int,
               priority: Priority) -> Produced:
    result = await engine.chat(request, priority=priority)
    body = completion_object(
        model=request.model, created=created,
        choices=[choice_object(index=i, message=_message(c), finish_reason=c.finish_reason,
                               logprobs=c.logprobs) for i, c in enumerate(result.choices)],
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens, reasoning_tokens=result.reasoning_tokens)
    return Produced(body=body, input_tokens=result.prompt_tokens,
                    output_tokens=result.completion_tokens, cached_tokens=result.cached_tokens)


def _message(choice: Choice) -> dict[str, Any]:
    """The choice's `message`: an upstream server's as it came, else OpenAI's fields (and,
    for a reasoning model, its thinking under both names servers use for it)."""
    if choice.message is not None:
        return choice.message
    message: dict[str, Any] = {"role": "assistant",
                               "content": choice.text if not choice.tool_calls else None,
                               "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = choice.tool_calls
    if choice.reasoning is not None:
        message["reasoning_content"] = message["reasoning"] = choice.reasoning
    return message


def _delta(event: Delta) -> dict[str, Any]:
    if event.delta is not None:
        return event.delta
    delta: dict[str, Any] = {"content": event.text} if event.text else {}
    if event.reasoning:
        delta["reasoning_content"] = delta["reasoning"] = event.reasoning
    if event.tool_calls:
        delta["tool_calls"] = event.tool_calls
    return delta


async def _stream(engine: Engine, request: ChatCompletionRequest, created: int,
                  count: CountUsage) -> AsyncIterator[bytes]:
    return _chunks(await opened(engine.chat_stream(request)), request, created, count)


async def _chunks(events: AsyncIterator[StreamEvent], request: ChatCompletionRequest,
                  created: int, count: CountUsage) -> AsyncIterator[bytes]:
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    chunk = chunk_writer(chunk_id=ids.chat_completion_id(), object_type="chat.completion.chunk",
                         created=created, model=request.model, include_usage=include_usage)
    for index in range(request.n):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    try:
        async for event in events:
            if isinstance(event, Delta):
                delta = _delta(event)
                logprobs = ({"content": event.logprobs, "refusal": None}
                            if event.logprobs is not None else None)
                finish = event.finish_reason
                if finish is not None and delta.get("tool_calls"):
                    # as OpenAI streams calls: the last piece, then the finish on its own
                    yield chunk([{"index": event.index, "delta": delta, "logprobs": logprobs,
                                  "finish_reason": None}])
                    delta, logprobs = {}, None
                yield chunk([{"index": event.index, "delta": delta, "logprobs": logprobs,
                              "finish_reason": finish}])
            elif isinstance(event, Usage):
                await count(event)
                if include_usage:
                    yield chunk([], usage_object(event.prompt_tokens, event.completion_tokens,
                                                 event.cached_tokens, event.reasoning_tokens))
    except Exception as exc:  # headers are sent: the error is the stream's last event
        yield error_event(exc, "chat completion")
    yield DONE


CHAT = Operation(endpoint="/v1/chat/completions", title="Chat Completions", capability="chat",
                 required="messages", request_type=ChatCompletionRequest, cost=_estimate,
                 admit=_admit, run=_run, stream=_stream, quick_cost=_quick_estimate,
                 prompt_lead=lambda body: first_text(body.get("messages")))
