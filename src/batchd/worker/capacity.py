"""In-flight capacity per model: what lets one stalled model hold only its own slots.

Each served model has a gate whose size follows its engine (`Engine.capacity()`: a llama.cpp
model's parallel slots and a batch ready behind them, an upstream fleet's current adaptive
limits), optionally capped by `BATCHD_WORKER_CONCURRENCY`. Batch requests wait at their model's
gate, never at a worker-wide one, so a hung upstream fills its own gate and nothing else.

The worker claims chunks per model in the same spirit: a model may hold `BATCHD_WORKER_CHUNKS`
chunks, more while its engine has idle capacity (the tail of a chunk leaves slots empty, and a
fleet of GPU servers takes more requests at once than a few chunks hold), and an owner with
nothing running anywhere always gets one more, so a small batch starts within a poll interval
beside a huge one and shares the engine with it.

A model whose engine is unreachable (connection failures, timeouts, overload after retries)
trips its breaker: its chunks are handed back unharmed, no chunk of it is claimed until a
growing back-off (2 s doubling to 60 s) has passed, and a success closes it again. Its
requests wait for the server to return, failed only by the batch's deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchd.engines.registry import ModelRegistry

log = logging.getLogger(__name__)

MIXED = "*"
"""The key of batches whose lines name several models: they run beside any model."""


class ModelGate:
    """A FIFO semaphore whose size is read from the engine at each admission and release.

    `on_idle` is called when a release leaves a place that nobody waits for: the worker's cue
    to claim another chunk at once rather than at its next poll (the tail of its chunks no
    longer fills the engine, or the engine's capacity grew). Once per cue: it is armed again
    when requests have to wait or a chunk is claimed (`rearm`), so a worker with nothing left
    to claim does not ask the store at every answer."""

    def __init__(self, capacity: Callable[[], int],
                 on_idle: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.on_idle = on_idle
        self.in_flight = 0
        self._armed = True
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def idle(self) -> int:
        """Free places that nobody waits for."""
        return 0 if self._waiters else max(0, self.capacity() - self.in_flight)

    def try_acquire(self) -> bool:
        """Take a place if one is free and nobody waits for it (no coroutine: every batch
        request passes here, and most find room)."""
        if not self._waiters and self.in_flight < self.capacity():
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        self._armed = True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # admitted just as we were cancelled: pass the place on
            else:
                with contextlib.suppress(ValueError):  # admit() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self.admit()
        if self._armed and not self._waiters and self.in_flight < self.capacity():
            self._armed = False
            if self.on_idle is not None:
                self.on_idle()

    def rearm(self) -> None:
        self._armed = True

    def admit(self) -> None:
        """Let waiters in while there is room (also after the engine's capacity grew)."""
        while self._waiters and self.in_flight < self.capacity():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


@dataclass
class Breaker:
    """Closed, or open until `open_until` (monotonic seconds) after an unreachable engine."""

    first_backoff: float = 2.0
    max_backoff: float = 60.0
    open_until: float = 0.0
    backoff: float = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def trip(self, now: float) -> float:
        """Open (again); returns the back-off before the next try."""
        if now < self.open_until:
            return self.open_until - now  # several requests report the same outage
        self.backoff = min(self.max_backoff, 2 * self.backoff or self.first_backoff)
        self.open_until = now + self.backoff
        return self.backoff

    def succeeded(self, now: float) -> None:
        """Closed for good, unless the breaker is still open: an answer to a request sent
        before the outage says nothing about the engine now."""
        if now >= self.open_until:
            self.backoff = 0.0


@dataclass
class ModelSlots:
    gate: ModelGate
    breaker: Breaker = field(default_factory=Breaker)
    chunks: int = 0  # chunks this worker holds for the model


class Capacity:
    """The worker's gates, breakers and chunk counts, one set per served model."""

    def __init__(self, registry: ModelRegistry, *, cap: int | None, chunks: int,
                 chunk_lines: int, on_idle: Callable[[], None] | None = None) -> None:
        """`chunk_lines`: the requests a chunk holds, as batches are cut (BATCHD_CHUNK_LINES).
        `on_idle`: a model's gate has room nobody waits for (once a cue: see ModelGate)."""
        self.registry = registry
        self.cap = cap
        self.chunks_per_model = chunks
        self.chunk_lines = chunk_lines
        self.models: dict[str, ModelSlots] = {}
        for model_id in registry.served_ids():
            self.models[model_id] = ModelSlots(gate=ModelGate(self._capacity_of(model_id),
                                                                 on_idle=on_idle))
        self.models[MIXED] = ModelSlots(gate=ModelGate(lambda: 0))
        # Every name (id and aliases) batches may carry for each model, for claims.
        self.names: dict[str, list[str]] = {MIXED: []}
        for name in registry.names():
            self.names.setdefault(registry.served_id(name) or MIXED, []).append(name)

    def _capacity_of(self, model_id: str) -> Callable[[], int]:
        def capacity() -> int:  # per acquire: the engine by its id, one lookup
            size = max(1, self.registry.engine_of_id(model_id).capacity())
            return size if self.cap is None else min(size, self.cap)
        return capacity

    def gate(self, model_id: str) -> ModelGate:
        return self.models[model_id].gate

    def busy(self) -> dict[str, tuple[int, int]]:
        """Per served model: requests in flight on its engine, and how many it can take."""
        return {model: (slots.gate.in_flight, slots.gate.capacity())
                for model, slots in self.models.items() if model != MIXED}

    def lanes(self, key: str) -> int:
        """Lanes a chunk of this model needs to fill its engine (the most it may take)."""
        ids = [key] if key != MIXED else [m for m in self.models if m != MIXED]
        most = max((self.registry.engine_for(m).max_capacity() for m in ids), default=1)
        return max(1, most if self.cap is None else min(most, self.cap))

    def claimable(self) -> tuple[list[str], list[str]]:
        """(models with room for another chunk, models full but open to a new owner)."""
        now = time.monotonic()
        room: list[str] = []
        crowded: list[str] = []
        for key, slots in self.models.items():
            if not slots.breaker.allows(now):
                continue
            usual = self.chunks_per_model
            most = self.most_while_idle(key)
            if slots.chunks < usual or (
                    slots.chunks < most and key != MIXED and slots.gate.idle > 0):
                room.append(key)
            elif slots.chunks < 2 * most:
                crowded.append(key)
        return room, crowded

    def most_while_idle(self, key: str) -> int:
        """The chunks a model may hold while its engine has idle places: four times the usual
        share, or twice the chunks that fill the most its engine takes at once, if that is
        more. (Eight chunks of 256 requests once capped a worker at 2,048 in flight, however
        many GPU servers its upstream model had: four of 768 slots ran at 0.60, now 0.89.)"""
        usual = 4 * self.chunks_per_model
        if key == MIXED:
            return usual
        return max(usual, 2 * -(-self.lanes(key) // self.chunk_lines))

    def unreachable(self, model_id: str) -> None:
        slots = self.models[model_id]
        backoff = slots.breaker.trip(time.monotonic())
        log.warning("model %r: its engine cannot be reached; its chunks are handed back and "
                    "none is claimed for %.0f s", model_id, backoff)

    def reachable(self, model_id: str) -> None:
        slots = self.models[model_id]
        if slots.breaker.backoff:
            slots.breaker.succeeded(time.monotonic())
            if not slots.breaker.backoff:
                log.info("model %r: its engine answers again", model_id)
