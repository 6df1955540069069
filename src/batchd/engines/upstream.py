"""The upstream engine: any OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama,
another batchd) runs the requests.

Several base URLs share the load. Each has its own adaptive concurrency limit
(upstream_limit.py): slow start (about fourfold per round trip) until latency per token rises
or the server pushes back, then additive growth; halved on a 429, a 5xx, a timeout or a broken
connection.
Retryable failures are retried with exponential backoff (honouring Retry-After), preferably on
another server; other 4xx answers are the request's own error.

Requests wait for room in one fair line (limits/fair_line.py): real-time before batch work,
then owners in turn, so one tenant's pile of requests does not queue ahead of another's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from batchd.engines import base
from batchd.engines.upstream_http import AiohttpHttp, Http, Unreachable
from batchd.engines.upstream_limit import Sent, Target
from batchd.limits.fair_line import FairLine
from batchd.limits.preparation import work_owner
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class UpstreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(min_length=1)
    """OpenAI-compatible API roots, e.g. http://gpu-1:8000/v1."""
    model: str | None = None
    """The model name to send upstream (default: this entry's id)."""
    api_key_env: str | None = None
    """Environment variable holding the upstream API key, if it needs one."""
    initial_concurrency: int = Field(default=128, ge=1)
    """Requests in flight per server at the start (the limit then finds the server's size)."""
    max_concurrency: int = Field(default=1024, ge=1)
    """Most requests in flight per server, whatever the limit finds."""
    latency_tolerance: float = Field(default=1.5, gt=1)
    """Grow only while latency per token stays under this multiple of the best seen."""
    timeout_seconds: float = Field(default=600.0, gt=0)
    """The longest wait for the server's next bytes (an answer still streaming is not cut)."""
    max_retries: int = Field(default=4, ge=0)
    backoff_seconds: float = Field(default=0.5, gt=0)
    """First retry delay; doubled each time, with jitter, at most 30 s."""
    image_url_hosts: list[str] = []
    """Hosts whose http(s) image URLs may be sent on (the upstream server fetches them, so
    any other host is refused: a user could otherwise make it fetch internal addresses).
    Data URLs are always sent on."""


# Answers that say the server cannot take work now (overloaded, restarting, behind a gateway
# that lost it), as opposed to a 500 that this one request may cause every time.
UNAVAILABLE = frozenset({429, 502, 503, 504})


class _Retry(Exception):
    def __init__(self, reason: str, *, after: float | None = None,
                 unavailable: bool = True) -> None:
        super().__init__(reason)
        self.after = after
        self.unavailable = unavailable


@dataclass(eq=False)
class _Waiter:
    """A request waiting for room; granted a server and its slot through `granted`."""

    granted: asyncio.Future[tuple[Target, Sent]]
    avoid: Target | None  # the server that just failed it
    since: float  # when it began to wait (monotonic)
    priority: int
    owner: str


class UpstreamEngine:
    AVOID_SECONDS = 5.0

    def __init__(self, options: UpstreamOptions, *, model_id: str,
                 http: Http | None = None) -> None:
        """`http`: what requests are sent through (None: the network; tests pass a fake)."""
        self.options = options
        self.model = options.model or model_id
        headers = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise base.EngineFailure(f"environment variable {options.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.http = http or AiohttpHttp(headers=headers,
                                        timeout_seconds=options.timeout_seconds)
        self._line: FairLine[_Waiter] = FairLine()
        self._held_out: asyncio.TimerHandle | None = None  # a grant for waiters holding out
        self.targets = [Target(base_url=url.rstrip("/"), limit=float(options.initial_concurrency),
                               ceiling=options.max_concurrency,
                               tolerance=options.latency_tolerance)
                        for url in options.base_urls]

    async def _admit(self, *, avoid: Target | None,
                     priority: base.Priority) -> tuple[Target, Sent]:
        """Wait until a server has room and it is this request's turn, then take the server
        with the most room. Chosen at admission, not before waiting: a request queued for
        one server would sit there while another had room. `avoid` (the server that just
        failed it) is taken only if no other has had room for `AVOID_SECONDS`."""
        now = time.monotonic()
        if not self._line:
            taken = self._take(avoid, since=now)
            if taken is not None:
                return taken
        waiter = _Waiter(granted=asyncio.get_running_loop().create_future(), avoid=avoid,
                         since=now, priority=int(priority), owner=work_owner.get())
        self._line.push(waiter, priority=waiter.priority, owner=waiter.owner)
        self._grant()
        try:
            return await waiter.granted
        except BaseException:
            granted = waiter.granted
            if granted.done() and not granted.cancelled():
                # Granted as it gave up: the slot goes back unjudged, to the next in line.
                target, _ = granted.result()
                target.in_flight -= 1
                self._grant()
            else:
                self._line.remove(waiter, priority=waiter.priority, owner=waiter.owner)
            raise

    def _take(self, avoid: Target | None, *, since: float) -> tuple[Target, Sent] | None:
        """The server with the most room and a slot on it, if one may be taken now."""
        roomy = [t for t in self.targets if t.has_room]
        others = [t for t in roomy if t is not avoid]
        if not others:
            holding_out = (any(t is not avoid for t in self.targets)
                           and time.monotonic() - since < self.AVOID_SECONDS)
            if holding_out or not roomy:
                return None
            others = roomy
        target = max(others, key=lambda t: (t.free / t.limit, random.random()))
        return target, target.take()

    def _grant(self) -> None:
        """Hand free slots to the waiters in line order. One holding out for another server
        keeps its turn but lets the next go meanwhile; a timer looks again when its wait
        for another server is over."""
        held_out: list[_Waiter] = []
        while self._line and any(t.has_room for t in self.targets):
            waiter = self._line.pop()
            assert waiter is not None
            if waiter.granted.done():
                continue  # cancelled
            taken = self._take(waiter.avoid, since=waiter.since)
            if taken is None:
                held_out.append(waiter)
                continue
            waiter.granted.set_result(taken)
        for waiter in reversed(held_out):
            self._line.put_back(waiter, priority=waiter.priority, owner=waiter.owner)
        if held_out and self._held_out is None:
            due = min(w.since for w in held_out) + self.AVOID_SECONDS - time.monotonic()
            self._held_out = asyncio.get_running_loop().call_later(
                max(0.0, due), self._grant_held_out)

    def _grant_held_out(self) -> None:
        self._held_out = None
        self._grant()

    def _release(self, target: Target, sent: Sent, *, ok: bool,
                 overloaded: bool = False, tokens: int = 0) -> None:
        target.settle(sent, ok=ok, overloaded=overloaded, tokens=tokens)
        self._grant()  # its slot, and any the limits grew by

    def _payload(self, request: ChatCompletionRequest, *, stream: bool) -> dict[str, Any]:
        """The request as the client sent it (every field it set, by its wire name: tools,
        response_format, any parameter the server may know), for this engine's model."""
        check_content_urls(request, self.options.image_url_hosts)
        body = _sent(request)
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
    def _check(status: int, headers: Mapping[str, str], body: bytes) -> None:
        if status < 400:
            return
        after = headers.get("retry-after")
        if status in RETRYABLE:
            raise _Retry(f"upstream answered {status}",
                         after=float(after) if after and after.replace(".", "").isdigit()
                         else None, unavailable=status in UNAVAILABLE)
        try:
            error = orjson.loads(body).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        if not isinstance(error, dict):
            error = {"message": str(error)}
        raise base.EngineRequestError(
            str(error.get("message") or f"The upstream server answered {status}."),
            code=error.get("code"), param=error.get("param"), status_code=status)

    async def _call(self, path: str, payload: dict[str, Any],
                    read: Callable[[dict[str, Any]], T], tokens: Callable[[T], int],
                    priority: base.Priority) -> T:
        """POST `payload` to `path` of a target with room, retrying overloads and outages on
        other targets with backoff; `read` turns the answer into the result."""
        target: Target | None = None
        failure: _Retry | None = None
        body = orjson.dumps(payload)
        for attempt in range(self.options.max_retries + 1):
            target, sent = await self._admit(avoid=target, priority=priority)
            try:
                answer = await self.http.post(f"{target.base_url}{path}", body)
                self._check(answer.status, answer.headers, answer.body)
                result = read(_json(answer.body))
            except _Retry as retry:
                failure = retry
            except Unreachable as exc:
                failure = _Retry(str(exc))
            except BaseException:  # the request's own error, or cancellation
                self._release(target, sent, ok=False)
                raise
            else:
                self._release(target, sent, ok=True, tokens=tokens(result))
                return result
            self._release(target, sent, ok=False, overloaded=True)
            assert failure is not None  # set by the except that got here
            log.warning("upstream %s: %s (attempt %d)", target.base_url, failure, attempt + 1)
            if attempt < self.options.max_retries:
                await self._backoff(attempt, failure)
        message = (f"The upstream servers failed {self.options.max_retries + 1} times; "
                   f"last: {failure}")
        if failure is not None and failure.unavailable:  # it waits for the server to come back
            raise base.EngineUnavailable(message, code="upstream_unavailable")
        raise base.EngineFailure(message, code="upstream_error")

    async def chat(self, request: ChatCompletionRequest, *,
                   priority: base.Priority = base.Priority.REALTIME) -> base.ChatResult:
        return await self._call("/chat/completions", self._payload(request, stream=False),
                                lambda body: _result(body, _chat_text),
                                lambda r: r.completion_tokens, priority)

    async def complete(self, request: CompletionRequest, *,
                       priority: base.Priority = base.Priority.REALTIME) -> base.ChatResult:
        return await self._call("/completions", self._completion_payload(request),
                                lambda body: _result(body, _completion_text),
                                lambda r: r.completion_tokens, priority)

    async def embed(self, inputs: EmbeddingInputs, *,
                    priority: base.Priority = base.Priority.REALTIME) -> base.EmbeddingResult:
        payload: dict[str, Any] = {
            "model": self.model, "encoding_format": "float",
            "input": inputs.texts if inputs.texts is not None else inputs.tokens}
        if inputs.dimensions is not None:
            payload["dimensions"] = inputs.dimensions
        return await self._call("/embeddings", payload,
                                lambda body: _embedding_result(body, inputs.count),
                                lambda r: 0, priority)

    def chat_stream(self, request: ChatCompletionRequest, *,
                    priority: base.Priority = base.Priority.REALTIME,
                    ) -> AsyncIterator[base.StreamEvent]:
        return self._stream("/chat/completions", lambda: self._payload(request, stream=True),
                            lambda choice: (choice.get("delta") or {}).get("content") or "",
                            priority)

    def complete_stream(self, request: CompletionRequest, *,
                        priority: base.Priority = base.Priority.REALTIME,
                        ) -> AsyncIterator[base.StreamEvent]:
        def payload() -> dict[str, Any]:
            return {**self._completion_payload(request), "stream": True,
                    "stream_options": {"include_usage": True}}
        return self._stream("/completions", payload, _completion_text, priority)

    def _completion_payload(self, request: CompletionRequest) -> dict[str, Any]:
        payload = _sent(request)
        payload["model"] = self.model
        payload.pop("echo", None)  # the endpoint adds the prompt itself, once
        return payload

    async def _stream(self, path: str, payload_of: Callable[[], dict[str, Any]],
                      text_of: Callable[[dict[str, Any]], str],
                      priority: base.Priority) -> AsyncIterator[base.StreamEvent]:
        """POST the payload to `path` with streaming, as deltas (`text_of` a choice; a chat
        chunk's whole `delta` kept) and the usage last. The payload is built here, so that a
        refusal (an image host not allowed) comes from the first event, before any sending."""
        payload = payload_of()
        target, sent = await self._admit(avoid=None, priority=priority)
        overloaded, pieces = False, 0
        usage: base.Usage | None = None
        try:
            async with self.http.stream(f"{target.base_url}{path}",
                                        orjson.dumps(payload)) as response:
                if response.status >= 400:
                    overloaded = response.status in RETRYABLE
                    self._check(response.status, response.headers, await response.read())
                async for line in response.lines():
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = _json(data)
                    if chunk.get("usage"):
                        usage = _stream_usage(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        event = _delta(choice, text_of)
                        if event is not None:
                            pieces += bool(event.text or event.reasoning or event.tool_calls)
                            yield event
        except _Retry as retry:
            raise base.EngineFailure(f"The upstream server is overloaded: {retry}",
                                code="upstream_error") from retry
        except Unreachable as exc:
            overloaded = True
            raise base.EngineFailure(f"The upstream server failed: {exc}",
                                code="upstream_error") from exc
        finally:
            self._release(target, sent, ok=not overloaded, overloaded=overloaded,
                          tokens=pieces)
        # Servers that do not report streaming usage: one piece is about one token.
        yield usage or base.Usage(prompt_tokens=0, completion_tokens=pieces)

    async def aclose(self) -> None:
        await self.http.aclose()

    def count_tokens(self, request: ChatCompletionRequest | CompletionRequest | EmbeddingInputs,
                     ) -> int | None:
        return None  # no tokenizer here: estimates count characters

    def capacity(self) -> int:
        return sum(int(target.limit) for target in self.targets)

    def max_capacity(self) -> int:
        return self.options.max_concurrency * len(self.targets)


def _json(data: bytes) -> Any:
    """An answer's JSON; a body that is not JSON is the server's failure, not the request's."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise base.EngineFailure(f"The upstream server sent something that is not JSON: "
                                 f"{data[:200]!r}", code="upstream_error") from exc


def _sent(request: BaseModel) -> dict[str, Any]:
    """What the client set, by wire name (`schema`, not `schema_`), less top-level nulls;
    nested values (a JSON schema's `"default": null`) stay exactly as they came."""
    body = request.model_dump(exclude_unset=True, by_alias=True)
    return {key: value for key, value in body.items() if value is not None}


def _stream_usage(usage: dict[str, Any]) -> base.Usage:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return base.Usage(prompt_tokens=usage.get("prompt_tokens", 0),
                      completion_tokens=usage.get("completion_tokens", 0),
                      cached_tokens=cached, reasoning_tokens=_reasoning_tokens(usage))


def _delta(choice: dict[str, Any], text_of: Callable[[dict[str, Any]], str]) -> base.Delta | None:
    """A streamed choice as an event (None: it carries nothing). A chat chunk's `delta` is
    kept whole, so tool-call pieces, refusals and reasoning reach the client as they came."""
    text = text_of(choice)
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    delta = choice.get("delta")
    carries = isinstance(delta, dict) and any(
        value not in (None, "", []) for key, value in delta.items() if key != "role")
    if not (text or carries or choice.get("finish_reason") or tokens):
        return None
    return base.Delta(index=choice.get("index", 0), text=text,
                      finish_reason=choice.get("finish_reason"),
                      logprobs=tokens if isinstance(tokens, list) else None,
                      reasoning=(_reasoning(delta) or "") if isinstance(delta, dict) else "",
                      tool_calls=delta.get("tool_calls") if isinstance(delta, dict) else None,
                      delta=delta if carries and isinstance(delta, dict) else None)


def check_content_urls(request: ChatCompletionRequest, allowed_hosts: list[str]) -> None:
    """Refuse any URL in a content part (an image's, a video's, an audio file's: whatever the
    server may fetch) unless it is a data URL or an http(s) URL of a host the operator
    allowed; text is not fetched and is not looked at."""
    allowed = {host.lower() for host in allowed_hosts}
    for i, message in enumerate(request.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise base.EngineRequestError(
                    "Each content part needs a `type`.", code="invalid_value",
                    param=f"messages[{i}].content[{j}].type")
            for where, url in _urls(part, f"messages[{i}].content[{j}]"):
                _check_url(url, where, allowed)


def _urls(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(parameter path, value) of every string in a part that names a URL."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key in ("text", "refusal") and value.get("type") == key):
                yield from _urls(item, f"{where}.{key}")
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _urls(item, f"{where}[{k}]")
    elif isinstance(value, str) and URL_LIKE.match(value):
        yield where, value


# A scheme, as URLs begin (`data:` needs no slash after it).
URL_LIKE = re.compile(r"^\s*([a-zA-Z][a-zA-Z0-9+.-]*:/|data:)", re.IGNORECASE)


def _check_url(url: str, where: str, allowed: set[str]) -> None:
    url = url.strip()
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
    except ValueError:  # an unbalanced IPv6 bracket and the like
        scheme, host = "", None
    if scheme == "data":
        return
    if (scheme not in ("http", "https") or not host or "@" in parts.netloc
            or not url.isprintable() or any(c in url for c in "\\ ")):
        raise base.EngineRequestError(
            "URLs in content must be data: URLs or plain http(s) URLs of allowed hosts.",
            code="invalid_image_url", param=where)
    if host.lower() not in allowed:
        raise base.EngineRequestError(
            f"Content from {host} is not allowed on this server: send it as a data: URL, or "
            "ask the operator to add the host to the model's `image_url_hosts`.",
            code="invalid_image_url", param=where)


def _chat_text(choice: dict[str, Any]) -> str:
    text: str = choice["message"].get("content") or ""
    return text


def _completion_text(choice: dict[str, Any]) -> str:
    text: str = choice.get("text") or ""
    return text


def _result(body: dict[str, Any], text_of: Callable[[dict[str, Any]], str]) -> base.ChatResult:
    """A chat or text completion (`text_of` reads a choice's text) as the engine's result; a
    chat choice keeps the server's whole `message` (tool calls, refusal, reasoning)."""
    try:
        choices = [_choice(c, text_of)
                   for c in sorted(body["choices"], key=lambda c: c.get("index", 0))]
        usage = body.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return base.ChatResult(choices=choices, prompt_tokens=usage.get("prompt_tokens", 0),
                               completion_tokens=usage.get("completion_tokens", 0),
                               cached_tokens=cached, reasoning_tokens=_reasoning_tokens(usage))
    except (KeyError, TypeError, AttributeError) as exc:
        raise base.EngineFailure(f"The upstream server sent a malformed completion: {exc!r}",
                                 code="upstream_error") from exc


def _choice(c: dict[str, Any], text_of: Callable[[dict[str, Any]], str]) -> base.Choice:
    message = c.get("message")
    if not isinstance(message, dict):  # a text completion
        return base.Choice(text=text_of(c), finish_reason=c.get("finish_reason") or "stop",
                           logprobs=c.get("logprobs"))
    return base.Choice(text=text_of(c), finish_reason=c.get("finish_reason") or "stop",
                       logprobs=c.get("logprobs"), tool_calls=message.get("tool_calls"),
                       reasoning=_reasoning(message), message=message)


def _reasoning(message: dict[str, Any]) -> str | None:
    """A reasoning model's thinking under either name servers use (vLLM and OpenRouter now
    say `reasoning`; DeepSeek, SGLang and llama-server `reasoning_content`)."""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return reasoning if isinstance(reasoning, str) else None


def _reasoning_tokens(usage: dict[str, Any]) -> int:
    details = usage.get("completion_tokens_details") or {}
    tokens = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return tokens if isinstance(tokens, int) else 0


def _embedding_result(body: dict[str, Any], count: int) -> base.EmbeddingResult:
    try:
        data = sorted(body["data"], key=lambda d: d.get("index", 0))
        vectors = [[float(x) for x in item["embedding"]] for item in data]
        if len(vectors) != count:
            raise ValueError(f"{len(vectors)} embeddings for {count} inputs")
        usage = body.get("usage") or {}
        return base.EmbeddingResult(vectors=vectors, prompt_tokens=usage.get("prompt_tokens", 0))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise base.EngineFailure(f"The upstream server sent malformed embeddings: {exc!r}",
                            code="upstream_error") from exc
