"""The instant engine: answers at once with a deterministic echo. For tests and control-plane
benchmarks only — it runs no model and is never the default."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
from collections.abc import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field

from batchd.engines import base
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs, normalized


async def _as_stream(result: base.ChatResult) -> AsyncIterator[base.StreamEvent]:
    """A finished result as a stream: word by word, then the usage."""
    for index, choice in enumerate(result.choices):
        words = choice.text.split(" ")
        for n, word in enumerate(words):
            last = n == len(words) - 1
            yield base.Delta(index=index, text=word if n == 0 else " " + word,
                        finish_reason=choice.finish_reason if last else None)
    yield base.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)


def _vector(text: str, dims: int) -> list[float]:
    digest = b""
    while len(digest) < dims:
        digest += hashlib.blake2b(text.encode() + len(digest).to_bytes(4, "big")).digest()
    return normalized([b / 127.5 - 1.0 for b in digest[:dims]])


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
    """A request whose last message contains this text crashes the whole process with a
    fatal signal (SIGABRT, as llama.cpp's GGML_ABORT does), as a request that crashes a
    native engine would (fault tests)."""
    embedding_dimensions: int = Field(default=8, ge=1, le=4096)
    """Length of the (hash-derived) vectors it returns for embeddings."""


class InstantEngine:
    """Replies `echo: <last message>` word by word; one word is one token."""

    def __init__(self, options: InstantOptions | None = None) -> None:
        self.options = options or InstantOptions()
        opts = self.options
        # Most runs set none of these: no coroutine per request to find that out.
        self._misbehaves = bool(opts.hang_marker or opts.crash_marker or opts.delay_seconds)

    def _answer(self, limit: int | None, stops: list[str], last: str, index: int
                ) -> base.Choice:
        if self.options.fail_marker and self.options.fail_marker in last:
            raise base.EngineFailure("The instant engine was told to fail on this request.")
        words = ["echo:", *last.split()]
        if index:
            words.append(f"#{index}")
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        text = " ".join(words)
        for stop in stops:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return base.Choice(text=text, finish_reason=finish)

    async def _misbehave(self, text: str) -> None:
        """Hang, crash or pause as the options say for a request with this text."""
        marker = self.options.hang_marker
        if marker and marker in text:
            await asyncio.Event().wait()
        crash = self.options.crash_marker
        if crash and crash in text:
            # A real abort(), not SIGKILL: faulthandler sees it, as it sees an engine's crash.
            # No core file: a test crashes it again and again.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.abort()
        if self.options.delay_seconds:
            await asyncio.sleep(self.options.delay_seconds)

    async def chat(self, request: ChatCompletionRequest, *,
                   priority: base.Priority = base.Priority.REALTIME) -> base.ChatResult:
        messages = _text_messages(request)
        last = messages[-1]
        if self._misbehaves:
            await self._misbehave(last)
        limit, stops = request.output_limit, request.stop_list
        choices = [self._answer(limit, stops, last, i) for i in range(request.n)]
        prompt = completion = 0
        for text in messages:
            prompt += 3 + len(text.split())
        for choice in choices:
            completion += len(choice.text.split())
        return base.ChatResult(choices=choices, prompt_tokens=prompt,
                               completion_tokens=completion)

    async def chat_stream(self, request: ChatCompletionRequest, *,
                          priority: base.Priority = base.Priority.REALTIME,
                          ) -> AsyncIterator[base.StreamEvent]:
        async for event in _as_stream(await self.chat(request)):
            yield event

    async def complete_stream(self, request: CompletionRequest, *,
                              priority: base.Priority = base.Priority.REALTIME
                              ) -> AsyncIterator[base.StreamEvent]:
        async for event in _as_stream(await self.complete(request)):
            yield event

    async def complete(self, request: CompletionRequest, *,
                       priority: base.Priority = base.Priority.REALTIME) -> base.ChatResult:
        prompt = request.single
        text = prompt if isinstance(prompt, str) else " ".join(f"t{t}" for t in prompt)
        if self._misbehaves:
            await self._misbehave(text)
        sampling = request.sampling()
        choices = [self._answer(sampling.max_tokens, list(sampling.stops), text, i)
                   for i in range(request.n)]
        return base.ChatResult(choices=choices, prompt_tokens=len(text.split()),
                          completion_tokens=sum(len(c.text.split()) for c in choices))

    async def embed(self, inputs: EmbeddingInputs, *,
                    priority: base.Priority = base.Priority.REALTIME) -> base.EmbeddingResult:
        """Deterministic unit vectors of `embedding_dimensions` from each input's hash."""
        items: list[str] = (inputs.texts if inputs.texts is not None
                            else [" ".join(f"t{t}" for t in ids) for ids in inputs.tokens or []])
        dims = self.options.embedding_dimensions
        if inputs.dimensions is not None and inputs.dimensions > dims:
            raise base.EngineRequestError(
                f"This model's embeddings have {dims} dimensions; 'dimensions' must be at "
                f"most that.", code="invalid_value", param="dimensions")
        if self._misbehaves:
            for text in items:
                await self._misbehave(text)
        vectors = [_vector(text, dims) for text in items]
        return base.EmbeddingResult(vectors=vectors,
                               prompt_tokens=sum(len(t.split()) for t in items))

    async def aclose(self) -> None:
        return None

    def count_tokens(self, request: ChatCompletionRequest | CompletionRequest | EmbeddingInputs,
                     ) -> int | None:
        return None  # no tokenizer here: estimates count characters

    def capacity(self) -> int:
        return self.options.concurrency

    def max_capacity(self) -> int:
        return self.options.concurrency


def _text_messages(request: ChatCompletionRequest) -> list[str]:
    """Each message's text. This fake engine answers text with text: what asks for more (an
    image, a tool call, a JSON answer) is refused by name, never silently ignored."""
    if request.tool_mode()[0] != "none":
        raise base.EngineRequestError("The instant engine does not call tools.",
                                      code="unsupported_parameter", param="tools")
    if request.response_format is not None and request.response_format.type != "text":
        raise base.EngineRequestError("The instant engine answers text only.",
                                      code="unsupported_parameter", param="response_format")
    texts = []
    for i, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, str):
            texts.append(content)
            continue
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") != "text":
                    raise base.EngineRequestError(
                        f"Invalid content type. {part.get('type')} is only supported by "
                        "certain models.", code="invalid_value",
                        param=f"messages[{i}].content[{j}]")
            content = "".join(str(part.get("text", "")) for part in content)
        texts.append(content or "")
    return texts

