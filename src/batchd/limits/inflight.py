"""What one key may hold on the real-time path at once, so that one tenant cannot take every
slot of an engine: choices being generated (a request with `n: 16` holds 16).

A key with nothing in flight may always run one request (up to the API's largest `n`); beyond
that it may hold at most `per_key` choices. Kept in the memory of each API process, like the
requests-per-minute limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from batchd.errors import TooManyRequests


class InFlight:
    def __init__(self, *, per_key: int) -> None:
        self.per_key = per_key
        self._held: dict[str, int] = {}

    def acquire(self, key: str, choices: int) -> Callable[[], None]:
        """Count `choices` against `key`, or refuse (429); returns the release, which may be
        called more than once."""
        held = self._held.get(key, 0)
        if held and held + choices > self.per_key:
            raise TooManyRequests(
                f"This key already has {held} real-time completions being generated, and "
                f"at most {self.per_key} may run at once; retry when one has finished.",
                code="concurrency_limit_exceeded", headers={"retry-after": "1"})
        self._held[key] = held + choices
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._held[key] - choices
            if left:
                self._held[key] = left
            else:
                del self._held[key]

        return release

    @contextlib.contextmanager
    def hold(self, key: str, choices: int) -> Iterator[None]:
        release = self.acquire(key, choices)
        try:
            yield
        finally:
            release()

    def total(self) -> int:
        """Choices being generated, all keys together."""
        return sum(self._held.values())
