"""Real-time usage, recorded as each answer is produced: a whole answer's once it is made,
a stream's when its engine reports what it cost (a stream the client abandons before its end
is not counted: nothing reported it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from batchd.api.auth import Principal
from batchd.api.state import Services
from batchd.engines.base import Engine, Priority, StreamEvent, Usage
from batchd.serving.operation import Operation


class UsageMeter:
    """Adds one real-time request's usage to the store, under its caller, model and kind."""

    def __init__(self, svc: Services, caller: Principal, operation: Operation,
                 model: str) -> None:
        self._usage_service = svc.usage
        self._caller = caller
        self._endpoint = operation.endpoint
        self._model = model
        self._counted = False

    async def add(self, *, input_tokens: int, output_tokens: int,
                  cached_tokens: int = 0) -> None:
        requests, self._counted = (0 if self._counted else 1), True  # several prompts: one
        await self._usage_service.add_realtime(
            owner=self._caller.owner, key_id=self._caller.key_id, model=self._model,
            endpoint=self._endpoint, requests=requests, input_tokens=input_tokens,
            output_tokens=output_tokens, cached_tokens=cached_tokens)

    def metered(self, engine: Engine) -> Engine:
        """`engine`, its streams reporting their usage here before passing it on."""
        return cast(Engine, _MeteredEngine(engine, self._usage))

    async def _usage(self, usage: Usage) -> None:
        await self.add(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                       cached_tokens=usage.cached_tokens)


class _MeteredEngine:
    def __init__(self, engine: Engine, on_usage: Callable[[Usage], Awaitable[None]]) -> None:
        self._engine = engine
        self._on_usage = on_usage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def chat_stream(self, request: Any, *,
                    priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        return self._metered(self._engine.chat_stream(request, priority=priority))

    def complete_stream(self, request: Any, *,
                        priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        return self._metered(self._engine.complete_stream(request, priority=priority))

    async def _metered(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        try:
            async for event in events:
                if isinstance(event, Usage):
                    await self._on_usage(event)
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
