"""How to generate, in engine-neutral terms: what each endpoint's sampling parameters become
before an engine sees them (the role vLLM's `SamplingParams` plays below its protocol)."""

from __future__ import annotations

from dataclasses import dataclass


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
