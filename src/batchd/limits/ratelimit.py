"""Requests-per-minute limits per key: a token bucket that refills continuously.

Kept in the memory of each API process: with several API servers, each enforces the limit on
the traffic it sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after_seconds: float  # until one more request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_seconds),
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_seconds)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_seconds * 1000)))
        return headers


def format_duration(seconds: float) -> str:
    """OpenAI's style: '1s', '6m0s', '120ms'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# Buckets kept before full ones are forgotten: callers keyed by client address are unbounded.
_MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def check(self, key: str, *, per_minute: int, now: float) -> Decision:
        """Count one request against `key`'s bucket, if it has room."""
        return self._decide(key, per_minute=per_minute, now=now, take=True)

    def peek(self, key: str, *, per_minute: int, now: float) -> Decision:
        """Whether one more request would be allowed, counting nothing."""
        return self._decide(key, per_minute=per_minute, now=now, take=False)

    def _decide(self, key: str, *, per_minute: int, now: float, take: bool) -> Decision:
        rate = per_minute / 60.0
        tokens, updated = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - updated) * rate)
        allowed = tokens >= 1.0
        if allowed and take:
            tokens -= 1.0
        if take or key in self._buckets:
            self._buckets[key] = (tokens, now)
        if len(self._buckets) > _MAX_BUCKETS:
            self._forget_full(now)
        return Decision(
            allowed=allowed, limit=per_minute, remaining=int(tokens),
            reset_seconds=(per_minute - tokens) / rate,
            retry_after_seconds=0.0 if allowed else (1.0 - tokens) / rate,
        )

    def _forget_full(self, now: float) -> None:
        """Drop buckets untouched for a minute: every bucket refills within a minute, so a
        forgotten one is exactly a new one."""
        self._buckets = {key: (tokens, updated) for key, (tokens, updated)
                         in self._buckets.items() if now - updated < 60.0}
