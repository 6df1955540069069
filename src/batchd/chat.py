"""The OpenAI chat-completions wire format: the request we accept and the objects we return."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from batchd import __version__, ids

if TYPE_CHECKING:
    from batchd.engines.base import Sampling

# Numbers are taken as JSON gives them: `"max_tokens": "2"` or `2.0` is a 400, as OpenAI
# answers, never silently converted (a string once counted as 1,024 tokens for the quota but
# ran as millions). A float field still takes a JSON integer (`"temperature": 1`).
StrictFloat = Annotated[float, Field(strict=True)]

# OpenAI's schema has it as a string; it names the serving software, not a model build.
SYSTEM_FINGERPRINT = f"fp_batchd_{__version__}"


class OpenAIBaseModel(BaseModel):
    """Requests keep unknown fields, so new client options never break a call."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: StrictBool = False


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


NOT_SET: tuple[object, ...] = (None, [], {})


def refuse_unsupported(value: object, accepted: tuple[object, ...] = NOT_SET) -> object:
    """`value` if it asks for nothing batchd would have to ignore (one of `accepted`); else
    the validation error that becomes a 400 naming the parameter."""
    if any(value == ok and type(value) is type(ok) for ok in accepted):
        return value
    raise PydanticCustomError("unsupported_parameter",
                              "this parameter is not supported by batchd yet")


class GenerationParams(OpenAIBaseModel):
    """What chat and text completions share: the model and how to sample."""

    model: StrictStr
    temperature: StrictFloat | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | None = Field(default=None, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1, le=16)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: StrictFloat | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: StrictFloat | None = Field(default=None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @property
    def stop_list(self) -> list[str]:
        """The stop sequences; an empty string stops nothing (it would match at once)."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [stop for stop in stops if stop]

    def _sampling(self, *, max_tokens: int | None, max_tokens_param: str,
                  top_logprobs: int | None) -> Sampling:
        from batchd.engines.base import Sampling  # the engines import this module

        return Sampling(
            n=self.n, max_tokens=max_tokens, max_tokens_param=max_tokens_param,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stops=tuple(self.stop_list), frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, top_logprobs=top_logprobs)


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
