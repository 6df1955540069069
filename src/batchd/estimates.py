"""What a batch input file will cost and when it would be done, before it is submitted.

A file's estimate reads it once, as batch creation would validate it, and sums per model:
its requests, their prompt tokens (by the model's own tokenizer and chat template where the
embedded engine has them: the first `EXACT_LINES` requests exactly, the rest scaled by their
size; counted from characters otherwise, and it says which), the most output they may make,
and what that costs at the models file's prices. The time comes from what the model got
through recently (its chunks done in the last hour, over the time it had any running) and the
requests queued before this file's.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from batchd.batches.validation import UTF8_BOM, InputValidator
from batchd.clock import Clock
from batchd.engines.registry import ModelRegistry
from batchd.errors import InvalidRequest, NotFound
from batchd.limits.preparation import Preparation
from batchd.openai.batches import COMPLETION_WINDOWS
from batchd.serving.endpoints import OPERATIONS, find_engine
from batchd.serving.operation import Operation
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.store.records import ChunkRun, FileRecord
from batchd.store.roles import ApiStore

DEFAULT_ENDPOINT = "/v1/chat/completions"
EXACT_LINES = 20_000  # per model: beyond it, prompts are scaled from their bytes
PIECE_LINES = 2_000  # read per turn on the estimate thread (another owner's turn between)
THROUGHPUT_WINDOW = 3600.0  # seconds of recent chunks the throughput is measured over


@contextlib.contextmanager
def closed_after(lines: Iterator[bytes]) -> Iterator[Iterator[bytes]]:
    """`lines`, closed however the reading ends (an open file, or an S3 stream)."""
    try:
        yield lines
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Throughput:
    requests_per_second: float | None  # None: the chunks took no measurable time
    output_tokens_per_request: float
    measured_requests: int
    busy_seconds: float


def throughput(runs: list[ChunkRun]) -> Throughput | None:
    """Requests finished per second while the model had any chunk running: the lines of
    `runs` over the union of their spans (chunks that ran side by side share the time)."""
    spans = sorted((r.started_at, r.finished_at) for r in runs if r.finished_at > r.started_at)
    busy, end = 0.0, float("-inf")
    for start, finish in spans:
        if finish <= end:
            continue
        busy += finish - max(start, end)
        end = finish
    lines = sum(r.lines for r in runs)
    if lines == 0:
        return None
    return Throughput(requests_per_second=lines / busy if busy > 0 else None,
                      output_tokens_per_request=sum(r.output_tokens for r in runs) / lines,
                      measured_requests=lines, busy_seconds=busy)


@dataclass
class ModelTally:
    """What one model's lines of the file add up to."""

    requests: int = 0
    counted_requests: int = 0  # prompts counted by the model's tokenizer
    counted_tokens: int = 0
    counted_bytes: int = 0
    uncounted_bytes: int = 0  # lines past EXACT_LINES (scaled from the counted ones)
    estimated_tokens: int = 0  # prompts counted from characters (no tokenizer)
    output_max: int = 0
    tokenizer: bool = True

    def prompt_tokens(self) -> int:
        scaled = (round(self.uncounted_bytes * self.counted_tokens / self.counted_bytes)
                  if self.counted_bytes else 0)
        return self.counted_tokens + scaled + self.estimated_tokens

    def method(self) -> str:
        if not self.counted_requests:
            return "estimate"
        if self.counted_requests == self.requests:
            return "tokenizer"
        # Past EXACT_LINES the rest are scaled; requests the tokenizer could not take (the
        # model would refuse them) were estimated from characters.
        return "tokenizer_scaled" if not self.estimated_tokens else "tokenizer_partly"


@dataclass
class FileTally:
    endpoint: str
    validator: InputValidator
    models: dict[str, ModelTally] = field(default_factory=dict)


class FileScan:
    """One file's lines tallied by model (blocking: run on the estimate thread)."""

    def __init__(self, *, lines: Iterator[bytes], tally: FileTally, operation: Operation,
                 registry: ModelRegistry) -> None:
        self.lines = lines
        self.tally = tally
        self.operation = operation
        self.registry = registry
        self.done = False

    def piece(self) -> None:
        """The next PIECE_LINES lines (sets `done` at the end of the file)."""
        validator = self.tally.validator
        for _ in range(PIECE_LINES):
            raw = next(self.lines, None)
            if raw is None or validator.too_many:
                self.done = True
                return
            item = validator.feed(raw)
            if item is not None:
                self._add(item["body"], size=len(raw))

    def _add(self, body: dict[str, Any], *, size: int) -> None:
        model = str(body["model"])
        served = self.registry.served_id(model) or model
        tally = self.tally.models.setdefault(served, ModelTally())
        tally.requests += 1
        op = self.operation
        prompt_estimate = op.cost(body, None)
        try:
            request = op.parse(body)
        except ValidationError:  # runs into a line error: costs its prompt, no output
            tally.estimated_tokens += prompt_estimate
            return
        tally.output_max += op.cost(body, request) - prompt_estimate
        if not tally.tokenizer:
            tally.estimated_tokens += prompt_estimate
        elif tally.counted_requests >= EXACT_LINES:
            tally.uncounted_bytes += size
        else:
            counted = self._count(tally, model, request)
            if counted is None:
                tally.estimated_tokens += prompt_estimate
            else:
                tally.counted_requests += 1
                tally.counted_tokens += counted
                tally.counted_bytes += size

    def _count(self, tally: ModelTally, model: str, request: Any) -> int | None:
        try:
            counted = find_engine(self.registry, model, self.operation).count_tokens(
                self.operation.counted(request))
        except Exception:  # a request its model would refuse: counted from characters
            return None
        if counted is None:
            tally.tokenizer = False  # this engine has none: do not ask again
        return counted


class EstimateService:
    def __init__(self, *, store: ApiStore, blobs: BlobStore, registry: ModelRegistry,
                 clock: Clock, settings: Settings) -> None:
        self.store = store
        self.blobs = blobs
        self.registry = registry
        self.clock = clock
        self.settings = settings
        # One thread of its own, fair across owners (one piece of each owner's at a time):
        # a million-line estimate neither stalls the API nor holds up real-time requests.
        self.reading = Preparation(threads=1, name="estimate")

    def close(self) -> None:
        self.reading.close()

    async def estimate_file(self, file: FileRecord, *, endpoint: str | None,
                            max_requests: int, completion_window: str = "24h",
                            ) -> dict[str, Any]:
        """`max_requests`: the most a batch of the caller's tier may hold (as creation
        checks it)."""
        if file.purpose != "batch":
            raise InvalidRequest(f"File {file.id} has purpose '{file.purpose}'; only a batch "
                                 "input file (purpose 'batch') can be estimated.",
                                 code="invalid_request", param="file_id")
        window = COMPLETION_WINDOWS.get(completion_window)
        if window is None:
            raise InvalidRequest(f"Invalid 'completion_window': {completion_window!r} (one of "
                                 f"{', '.join(COMPLETION_WINDOWS)}, as for a batch).",
                                 code="invalid_value", param="completion_window")
        with closed_after(self.blobs.lines(file.blob_key)) as lines:
            if endpoint is None:  # the first request's url, read off the same pass
                head, endpoint = await self.reading.run(lambda: _first_url(lines))
                lines = itertools.chain(head, lines)
            if endpoint not in OPERATIONS:
                raise InvalidRequest(f"Invalid 'endpoint': {endpoint!r} is not a batch "
                                     f"endpoint (one of {', '.join(sorted(OPERATIONS))}).",
                                     code="invalid_value", param="endpoint")
            tally = await self._read(lines, endpoint, max_requests)
        now = self.clock.now()
        queued: dict[str, int] = {}  # by served model (chunks name it as the file did)
        for name, pending in (await self.store.queue_snapshot())["pending"].items():
            served = self.registry.served_id(name) or name
            queued[served] = queued.get(served, 0) + pending
        models = []
        for model, counts in sorted(tally.models.items()):
            runs = await self.store.recent_chunk_runs(models=self._names_of(model),
                                                      since=now - THROUGHPUT_WINDOW)
            models.append(self._model_estimate(model, counts, throughput(runs),
                                               queued.get(model, 0)))
        return self._file_estimate(file, tally, models, now=now, window=window,
                                   window_name=completion_window)

    def _names_of(self, model: str) -> list[str]:
        """The served model's id and aliases: what a batch's chunks may name it by."""
        try:
            entry = self.registry.entry(model)
        except NotFound:
            return [model]
        return [entry.id, *entry.aliases]

    async def _read(self, lines: Iterator[bytes], endpoint: str,
                    max_requests: int) -> FileTally:
        validator = InputValidator(
            endpoint=endpoint, served_model=self.registry.served_id,
            capabilities=self.registry.capabilities, max_requests=max_requests,
            chunk_lines=self.settings.chunk_lines,
            max_listed_errors=self.settings.max_listed_errors)
        tally = FileTally(endpoint=endpoint, validator=validator)
        scan = FileScan(lines=lines, tally=tally, operation=OPERATIONS[endpoint],
                        registry=self.registry)
        while not scan.done:
            await self.reading.run(scan.piece)
        return tally

    def _model_estimate(self, model: str, counts: ModelTally, measured: Throughput | None,
                        ahead: int) -> dict[str, Any]:
        prompt = counts.prompt_tokens()
        expected_output = (round(measured.output_tokens_per_request * counts.requests)
                           if measured else None)
        prices = self.registry.prices(model)

        def cost(output: int | None) -> float | None:
            if prices is None or output is None:
                return None if output is None else 0.0
            return sum(prices.cost(input_tokens=prompt, cached_tokens=0, output_tokens=output,
                                   batch=True).values())

        rate = measured.requests_per_second if measured else None
        seconds = (ahead + counts.requests) / rate if rate else None
        return {
            "model": model,
            "requests": counts.requests,
            "prompt_tokens": prompt,
            "prompt_tokens_method": counts.method(),
            "output_tokens_max": counts.output_max,
            "output_tokens_expected": expected_output,
            "cost": {"currency": prices.currency if prices else "usd", "priced": bool(prices),
                     "max": cost(counts.output_max), "expected": cost(expected_output)},
            "throughput": None if measured is None or rate is None else {
                "requests_per_second": round(rate, 4),
                "measured_requests": measured.measured_requests,
                "busy_seconds": round(measured.busy_seconds, 3),
                "window_seconds": int(THROUGHPUT_WINDOW)},
            "queued_ahead_requests": ahead,
            "expected_seconds": None if seconds is None else round(seconds, 1),
        }

    def _file_estimate(self, file: FileRecord, tally: FileTally, models: list[dict[str, Any]],
                       *, now: float, window: int, window_name: str) -> dict[str, Any]:
        outcome = tally.validator.finish()
        seconds = [m["expected_seconds"] for m in models]
        known = None if not models or None in seconds else max(seconds)
        unpriced = [m["model"] for m in models if not m["cost"]["priced"]]
        expected = [m["cost"]["expected"] for m in models]
        currencies = {m["cost"]["currency"] for m in models} or {"usd"}
        return {
            "object": "batch.estimate",
            "input_file_id": file.id,
            "endpoint": tally.endpoint,
            "requests": sum(m["requests"] for m in models),
            "valid": outcome.ok,
            "errors": [e.as_dict() for e in outcome.errors],
            "models": models,
            "cost": {"currency": currencies.pop() if len(currencies) == 1 else "mixed",
                     "max": sum(m["cost"]["max"] or 0.0 for m in models),
                     "expected": None if None in expected else sum(expected),
                     "unpriced_models": unpriced},
            "expected_seconds": known,
            "expected_completed_at": None if known is None else int(now + known),
            "completion_window": window_name,
            "fits_completion_window": None if known is None else known <= window,
            "created_at": int(now),
        }


def _first_url(lines: Iterator[bytes]) -> tuple[list[bytes], str]:
    """The `url` of the first request among the first 100 lines (what the batch would most
    likely be), and the lines read to find it (the validation reads them next)."""
    head: list[bytes] = []
    for raw in itertools.islice(lines, 100):  # a file of broken lines is not held whole
        head.append(raw)
        try:
            item = orjson.loads(raw.removeprefix(UTF8_BOM))
        except orjson.JSONDecodeError:
            continue  # blank or broken: the validation says so
        url = item.get("url") if isinstance(item, dict) else None
        return head, url if isinstance(url, str) else DEFAULT_ENDPOINT
    return head, DEFAULT_ENDPOINT
