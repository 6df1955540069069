"""The engine protocol: one request in (a chat, a text completion or inputs to embed), one
result (or, for chat, a stream of deltas) out."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from batchd.errors import InvalidRequest, ServerError
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs


# Not frozen: one is built for every answer, and a frozen dataclass sets each field through
# object.__setattr__ (three times the cost). Treat them as read-only all the same.
@dataclass(kw_only=True, slots=True)
class Choice:
    text: str  # the answer's content ("" when it is only tool calls)
    finish_reason: str
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's `message.tool_calls`
    reasoning: str | None = None  # a reasoning model's thinking, apart from the answer
    # An upstream server's whole `message`, sent on as it came (tool calls, refusal,
    # reasoning and fields batchd does not know); None: built from the fields above.
    message: dict[str, Any] | None = None


@dataclass(kw_only=True, slots=True)  # not frozen, as Choice
class ChatResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, those spent thinking


@dataclass(frozen=True, kw_only=True)
class Delta:
    """A piece of generated text for choice `index`; `finish_reason` set on its last piece."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # chat format, for the tokens since the last
    reasoning: str = ""  # a piece of a reasoning model's thinking
    tool_calls: list[dict[str, Any]] | None = None  # chat-chunk `delta.tool_calls` entries
    # An upstream chunk's whole `delta`, sent on as it came; None: built from the above.
    delta: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Usage:
    """The last event of a stream: what the whole request cost."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


StreamEvent = Delta | Usage

# What an engine can serve: generating text (chat, completions, responses) or embedding it.
Capability = Literal["chat", "embeddings"]


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

    def count_tokens(self, request: ChatCompletionRequest | CompletionRequest | EmbeddingInputs,
                     ) -> int | None:
        """A request's prompt tokens by the model's own tokenizer (and chat template); None
        where the engine has none (an upstream server, the instant engine). Blocking: call
        it off the event loop."""
        ...

    def capacity(self) -> int:
        """Requests worth having in flight now (batch work fills this, no more)."""
        ...

    def max_capacity(self) -> int:
        """The most `capacity()` can become."""
        ...


class EngineRequestError(InvalidRequest):
    """The engine refused this request (context too long, unsupported parameter): the
    caller's fault, reported as a 400 for that request alone, or as the 4xx an upstream
    server answered (`status_code`)."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 status_code: int = 400) -> None:
        super().__init__(message, code=code, param=param)
        self.status_code = status_code


class EngineFailure(ServerError):
    """The engine broke while serving the request (reported as a 500 for that request)."""


class EngineUnavailable(EngineFailure):
    """The engine cannot be reached now (connections refused, timeouts, overload after
    retries): not the request's fault. Batch work hands it back to run when the engine
    returns; a real-time caller gets a 503."""

    status_code = 503
