"""The OpenAI chat-completions wire format: the request we accept and the objects we return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchd import ids


class OpenAIBaseModel(BaseModel):
    """Requests keep unknown fields, so new client options never break a call."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(OpenAIBaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

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
        "system_fingerprint": None,
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
