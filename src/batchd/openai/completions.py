"""The OpenAI legacy text-completions wire format (`/v1/completions`): a raw prompt, no chat
template, `text_completion` objects back."""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from batchd import ids
from batchd.errors import InvalidRequest
from batchd.openai.base import (
    NOT_SET,
    SYSTEM_FINGERPRINT,
    GenerationParams,
    StreamOptions,
    refuse_unsupported,
)
from batchd.openai.sampling import Sampling

# OpenAI's default for this endpoint (chat has none).
DEFAULT_MAX_TOKENS = 16
MAX_PROMPTS = 2048

Prompt = str | list[int]


class CompletionRequest(GenerationParams):
    # A string, a list of strings, token ids, or a list of token-id lists.
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(default=DEFAULT_MAX_TOKENS, ge=0)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    echo: StrictBool = False
    best_of: StrictInt | None = Field(default=None, ge=1, le=20)
    stream: StrictBool | None = False
    user: StrictStr | None = None
    # Refused by name, never silently ignored.
    stream_options: StreamOptions | None = None
    suffix: Any = None
    logit_bias: Any = None

    @field_validator("max_tokens")
    @classmethod
    def _default_length(cls, value: int | None) -> int:
        return DEFAULT_MAX_TOKENS if value is None else value  # an explicit null too

    @field_validator("suffix", "logit_bias")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        return refuse_unsupported(value, (*NOT_SET, ""))

    def prompts(self) -> list[Prompt]:
        """Each prompt on its own (a string or one list of token ids); refuses what OpenAI
        refuses: no prompt at all, too many, or a negative token id."""
        raw: Any = self.prompt
        if isinstance(raw, str):
            prompts: list[Prompt] = [raw]
        elif raw and all(isinstance(p, int) for p in raw):
            prompts = [list(raw)]
        else:
            prompts = list(raw)
        if not prompts:
            raise InvalidRequest("Invalid 'prompt': it must not be empty.",
                                 code="invalid_value", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidRequest(f"Invalid 'prompt': at most {MAX_PROMPTS} prompts are "
                                 "allowed per request.", code="invalid_value", param="prompt")
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, list) and (not prompt or min(prompt) < 0):
                raise InvalidRequest("Invalid 'prompt': token id lists must be non-empty and "
                                     "hold non-negative ids.", code="invalid_value",
                                     param=f"prompt[{i}]" if len(prompts) > 1 else "prompt")
        return prompts

    def check(self) -> list[Prompt]:
        """The prompts, once the options batchd cannot honour are refused by name."""
        if self.stream and self.logprobs is not None:
            raise InvalidRequest("logprobs are not streamed by batchd: ask without stream.",
                                 code="unsupported_parameter", param="logprobs")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("best_of other than n is not supported by batchd: every "
                                 "generated choice is returned.",
                                 code="unsupported_parameter", param="best_of")
        prompts = self.prompts()
        if self.echo and self.logprobs is not None:
            raise InvalidRequest("echo together with logprobs (the prompt's log "
                                 "probabilities) is not supported by batchd.",
                                 code="unsupported_parameter", param="echo")
        if self.echo and any(isinstance(p, list) for p in prompts):
            raise InvalidRequest("echo is supported only for text prompts, not token ids.",
                                 code="unsupported_parameter", param="echo")
        return prompts

    def one(self, prompt: Prompt) -> CompletionRequest:
        """This request for one of its prompts (what an engine receives)."""
        return self.model_copy(update={"prompt": prompt})

    @property
    def single(self) -> Prompt:
        """The one prompt of a request made by `one` (a string or token ids)."""
        prompts = self.prompts()
        if len(prompts) != 1:
            raise ValueError("an engine receives one prompt at a time")
        return prompts[0]

    def sampling(self) -> Sampling:
        return self._sampling(max_tokens=self.max_tokens, max_tokens_param="max_tokens",
                              top_logprobs=self.logprobs)


def legacy_logprobs(content: list[dict[str, Any]], *, offset: int) -> dict[str, Any]:
    """Chat-format token log probabilities (`{token, logprob, top_logprobs: [...]}`) in the
    completions format; `offset` is where the generated text starts in the returned text."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in content:
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        top.append({alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or []})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": offsets}


def completion_choice(*, index: int, text: str, finish_reason: str | None,
                      logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def text_completion_object(*, model: str, created: int, choices: list[dict[str, Any]],
                           prompt_tokens: int, completion_tokens: int,
                           cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "id": ids.text_completion_id(),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_object(prompt_tokens, completion_tokens, cached_tokens),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def usage_object(prompt_tokens: int, completion_tokens: int,
                 cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
