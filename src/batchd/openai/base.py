"""What every OpenAI wire model shares: lenient requests, strict numbers, and refusing by name
what batchd would otherwise have to ignore."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from batchd import __version__
from batchd.openai.sampling import Sampling

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
        return Sampling(
            n=self.n, max_tokens=max_tokens, max_tokens_param=max_tokens_param,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stops=tuple(self.stop_list), frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty, top_logprobs=top_logprobs)
