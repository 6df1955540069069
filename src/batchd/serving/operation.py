"""What serving one endpoint means: how its body is read and refused, what a request may
cost (for quotas), and how one request runs on an engine into the whole answer or its
stream of server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from batchd.engines.base import Capability, Engine, Priority, Usage

T = TypeVar("T")

# For quotas: output tokens assumed for a request that sets no maximum.
DEFAULT_OUTPUT_TOKENS = 1024


@dataclass(kw_only=True, slots=True)  # not frozen: one per request (engines/base.Choice)
class Produced:
    """One request's response body and what it cost."""

    body: dict[str, Any]
    input_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0


Runner = Callable[[Engine, Any, int, Priority], Awaitable[Produced]]
# Told a streamed answer's usage once the engine reports it, before the last events are
# sent (real-time usage metering); a failure it raises ends the stream with an error event.
CountUsage = Callable[[Usage], Awaitable[None]]
Streamer = Callable[[Engine, Any, int, CountUsage], Awaitable[AsyncIterator[bytes]]]


@dataclass(frozen=True, kw_only=True)
class Operation:
    endpoint: str
    title: str  # as OpenAI names it in messages ("Chat Completions")
    capability: Capability
    required: str  # the body key every request must have besides `model`
    request_type: type[BaseModel]
    # Tokens a request may cost (its prompt, estimated, and the most output it may make),
    # from its body and the validated request (None: the body will not run, and costs no
    # output: a `"max_tokens": "4900000"` is never counted as one thing and run as another).
    cost: Callable[[dict[str, Any], Any], int]
    # Refuses (InvalidRequest) what the request's model alone cannot see, before anything is
    # held or run; returns how many sequences it puts in the engine at once.
    admit: Callable[[Any], int]
    run: Runner  # (engine, admitted request, created, priority) -> the whole answer
    # (engine, admitted request, created, count) -> the answer's server-sent events, opened: an
    # engine's refusal before the first event is raised by the await, before any header is
    # sent. None: the endpoint has no streamed form.
    stream: Streamer | None = None
    # How a body's prompt begins (from the raw body: a line not yet validated may have any
    # shape): requests of a chunk that begin alike run one after another, so the engine's
    # prefix cache serves them instead of thrashing between prompts. "" groups nothing.
    prompt_lead: Callable[[dict[str, Any]], str] = lambda body: ""
    # What an engine tokenizes of a validated request (Engine.count_tokens): the request
    # itself, or what it becomes (a Responses request's chat, an embeddings request's inputs).
    counted: Callable[[Any], Any] = lambda request: request
    # `cost` read from the raw body alone, when every field it reads is plain JSON that the
    # validated request would hold as sent (an int in range, or absent); None: not so, ask
    # the validated request. Validating a body only for its cost was most of the time a
    # batch spent validating. A body that then fails for another field is counted as if it
    # ran: an upper bound, and still never one thing counted and another run.
    quick_cost: Callable[[dict[str, Any]], int | None] = lambda body: None

    def parse(self, body: dict[str, Any]) -> Any:
        """The validated request (pydantic's ValidationError for a bad body)."""
        return self.request_type.model_validate(body)

    def estimate(self, body: dict[str, Any]) -> int:
        """For enqueued-token quotas: what `cost` says, read through the model that runs it
        (or straight from the body, where that reads the same: `quick_cost`)."""
        quick = self.quick_cost(body)
        if quick is not None:
            return quick
        try:
            request = self.parse(body)
        except ValidationError:
            request = None
        return self.cost(body, request)


async def opened(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events` once its first item has come: a failure before it (a prompt too long for the
    model, a parameter the engine refuses) is raised here, so that a streamed request is
    refused with an HTTP error and not with a stream's last event."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        return events

    async def chained() -> AsyncIterator[T]:
        yield first
        async for item in events:
            yield item

    return chained()
