"""The upstream engine: any OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama,
another batchd) runs the requests.

Several base URLs share the load. Each has its own adaptive concurrency limit (AIMD): it grows
by about one request per round trip while latency holds, and halves on a 429, a 5xx, a timeout
or a broken connection. Retryable failures are retried with exponential backoff (honouring
Retry-After), preferably on another server; other 4xx answers are the request's own error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from batchd.chat import ChatCompletionRequest
from batchd.engines.base import (
    ChatResult,
    Choice,
    Delta,
    EngineFailure,
    EngineRequestError,
    EngineUnavailable,
    Priority,
    StreamEvent,
    Usage,
)

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class UpstreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(min_length=1)
    """OpenAI-compatible API roots, e.g. http://gpu-1:8000/v1."""
    model: str | None = None
    """The model name to send upstream (default: this entry's id)."""
    api_key_env: str | None = None
    """Environment variable holding the upstream API key, if it needs one."""
    initial_concurrency: int = Field(default=4, ge=1)
    """Requests in flight per server at the start."""
    max_concurrency: int = Field(default=64, ge=1)
    """Most requests in flight per server."""
    latency_tolerance: float = Field(default=1.5, gt=1)
    """Grow only while latency stays under this multiple of the best seen."""
    timeout_seconds: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    backoff_seconds: float = Field(default=0.5, gt=0)
    """First retry delay; doubled each time, with jitter, at most 30 s."""


@dataclass
class Target:
    """One upstream server and its adaptive limit."""

    base_url: str
    limit: float
    ceiling: int
    tolerance: float
    in_flight: int = 0
    best_latency: float = float("inf")
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def free(self) -> float:
        return self.limit - self.in_flight

    async def acquire(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, *, latency: float | None, overloaded: bool) -> None:
        async with self.changed:
            self.in_flight -= 1
            if overloaded:
                self.limit = max(1.0, self.limit / 2)
            elif latency is not None:
                self.best_latency = min(self.best_latency, latency)
                if latency <= self.best_latency * self.tolerance:
                    self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
            self.changed.notify_all()


# Answers that say the server cannot take work now (overloaded, restarting, behind a gateway
# that lost it), as opposed to a 500 that this one request may cause every time.
UNAVAILABLE = frozenset({429, 502, 503, 504})


class _Retry(Exception):
    def __init__(self, reason: str, *, after: float | None = None,
                 unavailable: bool = True) -> None:
        super().__init__(reason)
        self.after = after
        self.unavailable = unavailable


class UpstreamEngine:
    def __init__(self, options: UpstreamOptions, *, model_id: str) -> None:
        self.options = options
        self.model = options.model or model_id
        headers = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise EngineFailure(f"environment variable {options.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(options.timeout_seconds, connect=10),
            limits=httpx.Limits(max_connections=options.max_concurrency * len(options.base_urls)))
        self.targets = [Target(base_url=url.rstrip("/"), limit=float(options.initial_concurrency),
                               ceiling=options.max_concurrency,
                               tolerance=options.latency_tolerance)
                        for url in options.base_urls]

    def _pick(self, *, avoid: Target | None) -> Target:
        candidates = [t for t in self.targets if t is not avoid] or self.targets
        return max(candidates, key=lambda t: (t.free / t.limit, random.random()))

    def _payload(self, request: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
        body = request.model_dump(exclude_none=True)
        body["model"] = self.model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return body

    async def _backoff(self, attempt: int, retry: _Retry) -> None:
        delay = min(30.0, self.options.backoff_seconds * 2 ** attempt)
        delay = delay * (0.5 + random.random() / 2)
        if retry.after is not None:
            delay = max(delay, retry.after)
        await asyncio.sleep(delay)

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        after = response.headers.get("retry-after")
        if response.status_code in RETRYABLE:
            raise _Retry(f"upstream answered {response.status_code}",
                         after=float(after) if after and after.replace(".", "").isdigit()
                         else None, unavailable=response.status_code in UNAVAILABLE)
        try:
            error = response.json().get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if not isinstance(error, dict):
            error = {"message": str(error)}
        failure = EngineRequestError(
            str(error.get("message") or f"The upstream server answered "
                                        f"{response.status_code}."),
            code=error.get("code"), param=error.get("param"))
        failure.status_code = response.status_code
        raise failure

    async def chat(self, request: ChatCompletionRequest, *,
                   priority: Priority = Priority.REALTIME) -> ChatResult:
        payload = self._payload(request, stream=False)
        target: Target | None = None
        failure = _Retry("no attempt")
        for attempt in range(self.options.max_retries + 1):
            target = self._pick(avoid=target)
            await target.acquire()
            started = time.monotonic()
            try:
                response = await self.client.post(f"{target.base_url}/chat/completions",
                                                   json=payload)
                self._check(response)
            except _Retry as retry:
                failure = retry
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                failure = _Retry(f"{type(exc).__name__}: {exc}")
            except BaseException:  # the request's own error, or cancellation
                await target.release(latency=None, overloaded=False)
                raise
            else:
                await target.release(latency=time.monotonic() - started, overloaded=False)
                return _result(response.json())
            await target.release(latency=None, overloaded=True)
            log.warning("upstream %s: %s (attempt %d)", target.base_url, failure, attempt + 1)
            if attempt < self.options.max_retries:
                await self._backoff(attempt, failure)
        message = (f"The upstream servers failed {self.options.max_retries + 1} times; "
                   f"last: {failure}")
        if failure.unavailable:  # the request waits for the server to come back
            raise EngineUnavailable(message, code="upstream_unavailable")
        raise EngineFailure(message, code="upstream_error")

    async def chat_stream(self, request: ChatCompletionRequest, *,
                          priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        payload = self._payload(request, stream=True)
        target = self._pick(avoid=None)
        await target.acquire()
        started, overloaded, pieces = time.monotonic(), False, 0
        usage: Usage | None = None
        try:
            async with self.client.stream("POST", f"{target.base_url}/chat/completions",
                                          json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    overloaded = response.status_code in RETRYABLE
                    self._check(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage = Usage(prompt_tokens=chunk["usage"].get("prompt_tokens", 0),
                                      completion_tokens=chunk["usage"].get(
                                          "completion_tokens", 0))
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        pieces += bool(text)
                        if text or choice.get("finish_reason"):
                            yield Delta(index=choice.get("index", 0), text=text,
                                        finish_reason=choice.get("finish_reason"))
        except _Retry as retry:
            raise EngineFailure(f"The upstream server is overloaded: {retry}",
                                code="upstream_error") from retry
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            overloaded = True
            raise EngineFailure(f"The upstream server failed: {exc}",
                                code="upstream_error") from exc
        finally:
            await target.release(latency=None if overloaded else time.monotonic() - started,
                                 overloaded=overloaded)
        # Servers that do not report streaming usage: one piece is about one token.
        yield usage or Usage(prompt_tokens=0, completion_tokens=pieces)

    async def aclose(self) -> None:
        await self.client.aclose()

    def capacity(self) -> int:
        return sum(int(target.limit) for target in self.targets)

    def max_capacity(self) -> int:
        return self.options.max_concurrency * len(self.targets)


def _result(body: dict[str, Any]) -> ChatResult:
    try:
        choices = [Choice(text=c["message"].get("content") or "",
                          finish_reason=c.get("finish_reason") or "stop",
                          logprobs=c.get("logprobs"))
                   for c in sorted(body["choices"], key=lambda c: c.get("index", 0))]
        usage = body.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return ChatResult(choices=choices, prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0),
                          cached_tokens=cached)
    except (KeyError, TypeError, AttributeError) as exc:
        raise EngineFailure(f"The upstream server sent a malformed completion: {exc!r}",
                            code="upstream_error") from exc
