"""The instant engine: answers at once with a deterministic echo. For tests and control-plane
benchmarks only — it runs no model and is never the default."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

from batchd.chat import ChatCompletionRequest
from batchd.engines.base import (
    ChatResult,
    Choice,
    Delta,
    EngineFailure,
    Priority,
    StreamEvent,
    Usage,
)


class InstantOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay_seconds: float = 0.0
    """Pretend each request takes this long (to test cancels, crashes and leases)."""
    fail_marker: str | None = None
    """A request whose last message contains this text fails with an engine error."""
    hang_marker: str | None = None
    """A request whose last message contains this text never finishes (a hung engine)."""
    concurrency: int = Field(default=32, ge=1)
    """Requests it takes at once (what the worker keeps in flight for it)."""
    crash_marker: str | None = None
    """A request whose last message contains this text kills the whole process at once
    (SIGKILL), as a request that crashes a native engine would (fault tests)."""


class InstantEngine:
    """Replies `echo: <last message>` word by word; one word is one token."""

    def __init__(self, options: InstantOptions | None = None) -> None:
        self.options = options or InstantOptions()

    def _answer(self, request: ChatCompletionRequest, last: str, index: int) -> Choice:
        if self.options.fail_marker and self.options.fail_marker in last:
            raise EngineFailure("The instant engine was told to fail on this request.")
        words = ["echo:", *last.split()]
        if index:
            words.append(f"#{index}")
        limit = request.output_limit
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        text = " ".join(words)
        for stop in request.stop_list:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return Choice(text=text, finish_reason=finish)


    async def chat(self, request: ChatCompletionRequest, *,
                   priority: Priority = Priority.REALTIME) -> ChatResult:
        messages = request.plain_messages()
        last = str(messages[-1]["content"])
        marker = self.options.hang_marker
        if marker and marker in last:
            await asyncio.Event().wait()
        crash = self.options.crash_marker
        if crash and crash in last:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.options.delay_seconds:
            await asyncio.sleep(self.options.delay_seconds)
        choices = [self._answer(request, last, i) for i in range(request.n)]
        return ChatResult(
            choices=choices,
            prompt_tokens=sum(3 + len(str(m["content"]).split()) for m in messages),
            completion_tokens=sum(len(c.text.split()) for c in choices),
        )

    async def chat_stream(self, request: ChatCompletionRequest, *,
                          priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        result = await self.chat(request)
        for index, choice in enumerate(result.choices):
            words = choice.text.split(" ")
            for n, word in enumerate(words):
                last = n == len(words) - 1
                yield Delta(index=index, text=word if n == 0 else " " + word,
                            finish_reason=choice.finish_reason if last else None)
        yield Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)

    async def aclose(self) -> None:
        return None

    def capacity(self) -> int:
        return self.options.concurrency

    def max_capacity(self) -> int:
        return self.options.concurrency
