"""Prometheus metrics (prometheus-client): what this process did, and how the shared queue
stands.

Counters and histograms count what *this process* did (its HTTP requests, the batch requests
its worker finished); with several processes, Prometheus scrapes each and `sum()` adds them
up. The store-wide gauges (batches by status, pending requests by model) are read from the
database by every process that exposes metrics, so they are the same wherever you scrape
them: use `max()` across processes, not `sum()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.store.records import BatchStatus

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "batchd_http_requests", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "batchd_http_request_duration_seconds", "Time to answer an HTTP request (to its first "
    "byte for streamed answers).", ["method", "route"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
BATCH_REQUESTS = Counter(
    "batchd_batch_requests", "Batch requests this process's worker finished, by model and "
    "outcome (ok, error). A request run again after a crash counts again.",
    ["model", "outcome"], registry=REGISTRY)
TOKENS = Counter(
    "batchd_tokens", "Tokens of the batch requests this process finished, by model and kind "
    "(prompt, cached: prompt tokens served from the prefix cache, completion).",
    ["model", "kind"], registry=REGISTRY)
RUNNING_CHUNKS = Gauge("batchd_running_chunks", "Chunks this process's worker is running.",
                       registry=REGISTRY)
LEASES_LOST = Counter(
    "batchd_leases_lost", "Chunks this worker stopped because another took them over (its "
    "lease lapsed).", registry=REGISTRY)
CHUNKS_RECLAIMED = Counter(
    "batchd_chunks_reclaimed", "Chunks this worker claimed after an earlier run of them ended "
    "without finishing (a lapsed lease, a dead or restarted worker).", registry=REGISTRY)
CRASH_RECOVERIES = Counter(
    "batchd_crash_recoveries", "Chunks whose previous run died with requests in flight (those "
    "requests were charged and run again).", registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter(
    "batchd_webhook_deliveries", "Webhook delivery attempts by this process, by outcome "
    "(delivered, retry: failed and due again, failed: given up).", ["outcome"],
    registry=REGISTRY)
WORKER_STARTS = Counter("batchd_worker_starts", "Times a worker started in this process.",
                        registry=REGISTRY)


RATE_WINDOW = 30.0  # seconds over which batchd_engine_tokens_per_second is measured

# Every label value comes from a closed set: a value a client chose (an HTTP method, a model
# name in a request) would make one series per distinct value, and /metrics grow without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
MIXED_MODELS = "*"  # the pending gauge's name for batches that name several models
_served_models: frozenset[str] = frozenset()
_BATCH_STATUSES = frozenset(status.value for status in BatchStatus)


def serve_models(ids: list[str]) -> None:
    """The model ids this process serves: the only `model` label values besides `other`."""
    global _served_models
    _served_models = frozenset(ids)


def model_label(name: str | None) -> str:
    return name if name in _served_models or name == MIXED_MODELS else OTHER


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


class _Callbacks(Collector):
    """Gauges read at scrape time: engines' busy slots and recent tokens/s, and the
    store-wide snapshot."""

    def __init__(self) -> None:
        self.busy: Callable[[], dict[str, tuple[int, int]]] | None = None
        self.snapshot: dict[str, dict[str, int]] = {}
        self.snapshot_at = 0.0
        self.generated: dict[str, collections.deque[tuple[float, int]]] = {}

    def tokens_per_second(self) -> dict[str, float]:
        now = time.monotonic()
        rates = {}
        for model, recent in self.generated.items():
            while recent and recent[0][0] < now - RATE_WINDOW:
                recent.popleft()
            rates[model] = sum(n for _, n in recent) / RATE_WINDOW
        return rates

    def collect(self) -> Iterator[GaugeMetricFamily]:
        busy = GaugeMetricFamily("batchd_engine_busy_slots", "Requests in flight on each "
                                 "model's engine in this process.", labels=["model"])
        slots = GaugeMetricFamily("batchd_engine_slots", "Requests each model's engine in this "
                                  "process can take at once.", labels=["model"])
        engines = (self.busy() if self.busy else {}).items()
        for label, n in _summed((model_label(m), inside) for m, (inside, _) in engines):
            busy.add_metric([label], n)
        for label, n in _summed((model_label(m), size) for m, (_, size) in engines):
            slots.add_metric([label], n)
        yield busy
        yield slots
        speed = GaugeMetricFamily("batchd_engine_tokens_per_second", "Completion tokens "
                                  f"per second each model generated for batches in this "
                                  f"process, over the last {RATE_WINDOW:g} s.",
                                  labels=["model"])
        for model, rate in self.tokens_per_second().items():
            speed.add_metric([model], rate)
        yield speed
        statuses = GaugeMetricFamily("batchd_batches", "Batches by status (the whole store).",
                                     labels=["status"])
        for label, n in _summed((status if status in _BATCH_STATUSES else OTHER, n)
                                for status, n in self.snapshot.get("batches", {}).items()):
            statuses.add_metric([label], n)
        yield statuses
        # The store may name models this process does not serve (another host's models
        # file, an older one): those add up under `other`.
        for name, key, help in _QUEUE_GAUGES:
            family = GaugeMetricFamily(name, help, labels=["model"])
            for label, n in _summed((model_label(model), n)
                                    for model, n in self.snapshot.get(key, {}).items()):
                family.add_metric([label], n)
            yield family
        age = GaugeMetricFamily("batchd_store_snapshot_age_seconds", "How old the store-wide "
                                "gauges are.")
        age.add_metric([], time.time() - self.snapshot_at if self.snapshot_at else -1)
        yield age

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_QUEUE_GAUGES = (
    ("batchd_backlog_requests", "pending", "Requests of running batches not finished yet, "
     "waiting for a worker or running on one, by model (the whole store; '*' for chunks "
     "that name several): what to scale workers on, as it falls only when requests finish."),
    ("batchd_pending_requests", "pending", "The same as batchd_backlog_requests (its older "
     "name)."),
    ("batchd_queued_requests", "queued", "Requests of running batches that no worker has "
     "taken yet, by model (the whole store): falls as soon as work is assigned, so it cannot "
     "drive scaling alone."),
)


def _summed(pairs: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Values by label, those that share one (`other`) added up: one sample per label."""
    sums: dict[str, int] = {}
    for label, n in pairs:
        sums[label] = sums.get(label, 0) + n
    return list(sums.items())


CALLBACKS = _Callbacks()
REGISTRY.register(CALLBACKS)


@functools.cache
def _finished_children(name: str) -> tuple[Any, Any, Any, Any, Any]:
    """One model's labelled counters, looked up once (`labels` costs microseconds)."""
    return (BATCH_REQUESTS.labels(name, "ok"), BATCH_REQUESTS.labels(name, "error"),
            TOKENS.labels(name, "prompt"), TOKENS.labels(name, "cached"),
            TOKENS.labels(name, "completion"))


class Finished:
    """Batch requests a chunk run finished, counted here and added to the counters on
    `flush` (each heartbeat and at the run's end): a counter's increment takes a lock, and a
    chunk of instant answers finishes tens of thousands a second."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}  # label: [ok, error, prompt, cached, completion]

    def add(self, model: str | None, *, ok: bool, prompt: int, cached: int,
            completion: int) -> None:
        name = model_label(model)
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = [0, 0, 0, 0, 0]
        counts[0 if ok else 1] += 1
        counts[2] += prompt
        counts[3] += cached
        counts[4] += completion

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        now = time.monotonic()
        for name, values in counts.items():
            for counter, n in zip(_finished_children(name), values, strict=True):
                if n:
                    counter.inc(n)
            if values[4]:
                recent = CALLBACKS.generated.setdefault(name, collections.deque())
                recent.append((now, values[4]))
                while recent and recent[0][0] < now - RATE_WINDOW:  # unscraped, it stays small
                    recent.popleft()


class StoreGauges:
    """The store-wide gauges' source: `read` is the store's snapshot of the queue (two
    aggregate queries), kept in CALLBACKS for the scrapes."""

    def __init__(self, read: Callable[[], Awaitable[dict[str, dict[str, int]]]]) -> None:
        self._read = read

    async def refresh(self, *, timeout: float | None = None) -> None:
        """Read the snapshot now; if the store cannot answer, raise and keep the last one
        (batchd_store_snapshot_age_seconds says how old it is)."""
        async with asyncio.timeout(timeout):
            CALLBACKS.snapshot = await self._read()
        CALLBACKS.snapshot_at = time.time()

    async def keep_fresh(self, stop: asyncio.Event, *, every: float = 10.0) -> None:
        """Refresh every `every` seconds until `stop` is set (runs as a task while the
        process serves metrics)."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # an outage: keep the last snapshot (its age says so)
                log.debug("could not refresh the store gauges: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()


class HttpMetrics:
    """Counts every HTTP request by its route template (`/v1/batches/{batch_id}`, never the
    raw path, so ids do not multiply the series) and times it to the response's start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                HTTP_LATENCY.labels(method_label(scope["method"]), _route(scope)).observe(
                    time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            HTTP_REQUESTS.labels(method_label(scope["method"]), _route(scope),
                                 status_label(status)).inc()


def _route(scope: Scope) -> str:
    """The matched route's template (one of the app's own routes: a closed set), never the
    path a client sent."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"
