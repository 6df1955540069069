"""Real-time usage, recorded as each whole answer is produced, before it is sent; a streamed
answer's when the engine reports it at the end, before the stream's last events."""

from __future__ import annotations

from batchd.api.auth import Principal
from batchd.api.state import Services
from batchd.engines.base import Usage
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

    async def add_usage(self, usage: Usage) -> None:
        await self.add(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                       cached_tokens=usage.cached_tokens)
