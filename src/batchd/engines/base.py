"""The engine protocol: one request in (a chat, a text completion or inputs to embed), one
result (or, for chat, a stream of deltas) out."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from batchd.chat import ChatCompletionRequest
from batchd.errors import InvalidRequest, ServerError

if TYPE_CHECKING:
    from batchd.completions import CompletionRequest
    from batchd.embeddings import EmbeddingInputs


@dataclass(frozen=True, kw_only=True)
class Choice:
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ChatResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class Delta:
    """A piece of generated text for choice `index`; `finish_reason` set on its last piece."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # chat format, for the tokens since the last


@dataclass(frozen=True, kw_only=True)
class Usage:
    """The last event of a stream: what the whole request cost."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


StreamEvent = Delta | Usage


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to generate, whatever the endpoint asked in its own words."""

    n: int = 1
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the request's name for it, for error messages
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stops: tuple[str, ...] = ()
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_logprobs: int | None = None  # None: no log probabilities; else how many alternatives


@dataclass(frozen=True, kw_only=True)
class EmbeddingResult:
    vectors: list[list[float]]  # one per input, in input order, each of unit length
    prompt_tokens: int


class Priority(enum.IntEnum):
    """Who waits: real-time requests are admitted before batch work."""

    REALTIME = 0
    BATCH = 1


class Engine(Protocol):
    """An inference backend. Cancelling the awaiting task must stop generation promptly."""

    async def chat(self, request: ChatCompletionRequest, *,
                   priority: Priority = Priority.REALTIME) -> ChatResult: ...

    def chat_stream(self, request: ChatCompletionRequest, *,
                    priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]: ...

    async def complete(self, request: CompletionRequest, *,
                       priority: Priority = Priority.REALTIME) -> ChatResult:
        """A legacy text completion of `request.prompt` (one prompt: a string or token ids),
        no chat template; choices' logprobs in the completions format."""
        ...

    def complete_stream(self, request: CompletionRequest, *,
                        priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        """`complete`, as it is generated."""
        ...

    async def embed(self, inputs: EmbeddingInputs, *,
                    priority: Priority = Priority.REALTIME) -> EmbeddingResult:
        """One vector per input (texts or token ids)."""
        ...

    async def aclose(self) -> None: ...

    def capacity(self) -> int:
        """Requests worth having in flight now (batch work fills this, no more)."""
        ...

    def max_capacity(self) -> int:
        """The most `capacity()` can become."""
        ...


class EngineRequestError(InvalidRequest):
    """The engine refused this request (context too long, unsupported parameter): the
    caller's fault, reported as a 400 for that request alone."""


class EngineFailure(ServerError):
    """The engine broke while serving the request (reported as a 500 for that request)."""


class EngineUnavailable(EngineFailure):
    """The engine cannot be reached now (connections refused, timeouts, overload after
    retries): not the request's fault. Batch work hands it back to run when the engine
    returns; a real-time caller gets a 503."""

    status_code = 503
