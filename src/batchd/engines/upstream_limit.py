"""The adaptive limit on requests in flight to one upstream server: how many it can take is
found from its answers' latency and push-back, never configured (see Target)."""

from __future__ import annotations

import collections
import logging
import statistics
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One upstream server and its adaptive limit on requests in flight.

    Each answer is judged by its latency *per completion token* (at least 16, so a long
    generation is not mistaken for a queue) against the best seen: within `tolerance` times
    it, the server had room for the request; beyond, it was queued. Slow start: every answer
    that found room adds `SLOW_START_GAIN`, so the limit grows about fourfold per round trip
    (a 512-slot server is found in three round trips from the default 32); after
    that, about a tenth per round trip. A queued answer sets the limit to what would have kept
    it within the tolerance (once the last ten or so answers show queueing on average, not
    on one slow answer): sent with k requests at the server, queued x times the
    tolerable latency, a FIFO server of N slots has k = x * tolerance * N, so the limit
    becomes k / x, about tolerance * N: saturated, with a short queue (the median of the
    last answers' estimates, and at most seven eighths of the limit lost at once). A 429,
    5xx, timeout or broken connection halves it. Decreases are
    judged only on requests sent after the last one (the answers to requests sent before it
    say nothing new).
    """

    base_url: str
    limit: float
    ceiling: int
    tolerance: float
    in_flight: int = 0
    best_latency: float = float("inf")  # seconds per completion token, at best
    mean_latency: float | None = None  # the same, over about the last ten answers
    samples: int = 0  # answers in that mean
    estimates: collections.deque[float] = field(  # the limits the last answers suggest
        default_factory=lambda: collections.deque(maxlen=16))
    slow_start: bool = True
    decreased_at: float = float("-inf")

    SLOW_START_GAIN = 3.0
    PROBE_GAIN = 0.1  # after slow start: about a tenth more per round trip
    MIN_TOKENS = 16
    MIN_SAMPLES = 8

    @property
    def free(self) -> float:
        return self.limit - self.in_flight

    @property
    def has_room(self) -> bool:
        return self.in_flight < int(self.limit)

    def take(self) -> Sent:
        self.in_flight += 1
        return Sent(at=time.monotonic(), with_in_flight=self.in_flight)

    def settle(self, sent: Sent, *, ok: bool, overloaded: bool = False, tokens: int = 0) -> None:
        """`ok`: an answer came back (its latency is judged); `overloaded`: the server
        pushed back or failed (the limit halves)."""
        self.in_flight -= 1
        fresh = sent.at > self.decreased_at
        if overloaded:
            if fresh:
                self._decrease(self.limit / 2)
                log.debug("upstream %s: pushed back: limit halved to %.0f", self.base_url,
                          self.limit)
        elif ok:
            self._judge(sent, time.monotonic() - sent.at, tokens, fresh=fresh)

    def _judge(self, sent: Sent, latency: float, tokens: int, *, fresh: bool) -> None:
        unit = latency / max(tokens, self.MIN_TOKENS)
        self.best_latency = min(self.best_latency, unit)
        allowed = self.best_latency * self.tolerance
        if unit <= allowed:
            gain = self.SLOW_START_GAIN if self.slow_start else self.PROBE_GAIN
            self.limit = min(float(self.ceiling), self.limit + gain)
        if not fresh:
            return  # sent before the last decrease: it tells of a queue already dealt with
        # One slow answer (a new connection, a busy moment) is noise; a run of them is a
        # queue: decreases follow the mean of about the last ten answers.
        self.mean_latency = (unit if self.mean_latency is None
                             else self.mean_latency + 0.1 * (unit - self.mean_latency))
        self.samples += 1
        # What this answer says the limit could be: sent with k at the server and queued x
        # times the tolerable latency, k / x (k itself if it was not queued). The median
        # of the last answers is used: in a burst of sends the order they reach the server
        # is not the order they were sent, so single answers err both ways.
        self.estimates.append(sent.with_in_flight * allowed / max(unit, allowed))
        if self.samples >= self.MIN_SAMPLES and self.mean_latency > allowed:
            was, mean = self.limit, self.mean_latency
            self._decrease(max(self.limit / 8, statistics.median(self.estimates)))
            log.debug("upstream %s: queued (%.3f s a token, best %.3f): limit %.0f -> %.0f",
                      self.base_url, mean, self.best_latency, was, self.limit)

    def _decrease(self, to: float) -> None:
        self.limit = max(1.0, min(self.limit, to))
        self.slow_start = False
        self.decreased_at = time.monotonic()
        self.mean_latency = None  # judged afresh on what is sent from now on
        self.samples = 0
        self.estimates.clear()


@dataclass(slots=True)  # not frozen: one per upstream request (see engines/base.Choice)
class Sent:
    at: float  # monotonic time it was sent
    with_in_flight: int  # requests at the server then, itself included
