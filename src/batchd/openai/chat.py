"""The OpenAI chat-completions wire format: the request we accept and the objects we return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from batchd import ids
from batchd.openai.base import (
    SYSTEM_FINGERPRINT,
    GenerationParams,
    OpenAIBaseModel,
    StreamOptions,
    refuse_unsupported,
)
from batchd.openai.sampling import Sampling


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    user: StrictStr | None = None
    # Accepted by OpenAI but acted on by no batchd engine yet: refused by name (a 400 naming
    # the parameter), never silently ignored.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    web_search_options: Any = None

    @field_validator("tools", "tool_choice", "functions", "function_call", "audio",
                     "web_search_options")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        return refuse_unsupported(value)

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> Sampling:
        return self._sampling(
            max_tokens=self.output_limit,
            max_tokens_param=("max_completion_tokens" if self.max_completion_tokens
                              else "max_tokens"),
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else None)

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as dicts with text content (content parts of type text are joined)."""
        out = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(
                    str(part.get("text", "")) for part in content if part.get("type") == "text"
                )
            out.append({"role": message.role, "content": content or ""})
        return out


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def completion_object(
    *, model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int,
    created: int, cached_tokens: int = 0,
) -> dict[str, Any]:
    """A full `chat.completion` object, shaped like OpenAI's."""
    return {
        "id": ids.chat_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_object(prompt_tokens, completion_tokens, cached_tokens),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
    }


def usage_object(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def choice_object(
    *, index: int, text: str, finish_reason: str, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
