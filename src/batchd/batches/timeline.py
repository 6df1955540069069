"""A batch's progress over time, for the console's chart: requests finished and failed, and
output tokens, as each chunk was done (its commit time), then the live counts now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchd.store.records import BatchRecord, ChunkDone, ChunkProgress

MAX_POINTS = 300  # a chart 390 px wide shows no more


@dataclass
class Point:
    at: float
    completed: int
    failed: int
    output_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "completed": self.completed, "failed": self.failed,
                "output_tokens": self.output_tokens}


def progress_timeline(batch: BatchRecord, chunks: list[ChunkDone], live: ChunkProgress | None,
                      *, now: float) -> dict[str, Any]:
    """Cumulative counts at each chunk's commit (at most MAX_POINTS, the last of each time
    slice kept), from when the batch started running; a running batch's last point is now,
    with what its chunks have finished so far."""
    start = batch.in_progress_at
    points: list[Point] = []
    if start is not None:
        points.append(Point(float(start), 0, 0, 0))
        completed = failed = tokens = 0
        for chunk in sorted(chunks, key=lambda c: c.finished_at):
            completed += chunk.done_ok
            failed += chunk.done_err
            tokens += chunk.done_output_tokens
            points.append(Point(chunk.finished_at, completed, failed, tokens))
        running = batch.status in ("in_progress", "finalizing", "cancelling")
        if running and live is not None:
            points.append(Point(max(now, points[-1].at), live.n_ok, live.n_err,
                                live.output_tokens))
    return {"object": "batch.progress", "batch_id": batch.id, "total": batch.total,
            "points": [p.as_dict() for p in _thinned(points)]}


def _thinned(points: list[Point]) -> list[Point]:
    """At most MAX_POINTS: the first, then the last point of each of equal time slices."""
    if len(points) <= MAX_POINTS:
        return points
    first, last = points[0].at, points[-1].at
    width = (last - first) / (MAX_POINTS - 1) or 1.0
    kept: dict[int, Point] = {}
    for point in points[1:]:
        kept[int((point.at - first) / width)] = point
    return [points[0], *kept.values()]
