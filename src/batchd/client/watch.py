"""Watching a batch from the terminal: a live bar (rich) until the batch ends."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from batchd.client.api import BatchdClient, ClientError
from batchd.client.terminal import safe

TERMINAL = ("completed", "failed", "expired", "cancelled")
POLL_SECONDS = 2.0  # a trial key may make 30 requests a minute


def poll_batch(client: BatchdClient, batch_id: str, *, patience: float = 300.0) -> dict[str, Any]:
    """The batch now, waiting out what passes: a rate limit (429), a server that is restarting
    or briefly unavailable (503, a refused connection), with growing waits up to `patience`
    seconds in all; anything else (a 404, a bad key) is raised at once."""
    waited, wait = 0.0, 1.0
    while True:
        try:
            return client.batch(batch_id)
        except ClientError as exc:
            if exc.status not in (None, 429, 503) or waited >= patience:
                raise
        time.sleep(wait)
        waited += wait
        wait = min(wait * 2, 15.0)


def done_of(batch: dict[str, Any]) -> tuple[int, int, int]:
    counts = batch.get("request_counts") or {}
    return int(counts.get("completed", 0)), int(counts.get("failed", 0)), int(
        counts.get("total", 0))


def output_tokens(batch: dict[str, Any]) -> int:
    return int((batch.get("usage") or {}).get("output_tokens", 0))


def seconds_left(batch: dict[str, Any], *, now: float) -> float | None:
    """Time left for a running batch at its own pace since it started running (the server's
    counts, so a watch started late knows at once); None before anything has finished."""
    completed, failed, total = done_of(batch)
    started = batch.get("in_progress_at")
    if batch.get("status") != "in_progress" or not started or now <= started:
        return None
    finished = completed + failed
    if finished <= 0 or total <= finished:
        return None
    return float((total - finished) * (now - float(started)) / finished)


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def watch(client: BatchdClient, batch_id: str, console: Console, *,
          poll_seconds: float = POLL_SECONDS) -> dict[str, Any]:
    """Show the batch's progress until it reaches a final status; returns it then.

    The bar counts finished requests (completed + failed) of the total; beside it: failures,
    generated tokens per second since watching began, elapsed time and the time left at the
    batch's own pace since it started running. Rate limits and a briefly unavailable server
    are waited out."""
    columns = (
        # The status comes from the server: shown escaped, and never read as markup.
        TextColumn("{task.fields[status]:<11}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:>10}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
    )
    started = time.monotonic()
    first_tokens: int | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(batch_id, total=None, status="…", failed=0, rate="",
                            eta=clock_text(None))
        patience = 0.0  # the first look fails at once (a wrong id, URL or key)
        while True:
            batch = poll_batch(client, batch_id, patience=patience)
            patience = 300.0
            completed, failed, total = done_of(batch)
            tokens = output_tokens(batch)
            first_tokens = tokens if first_tokens is None else first_tokens
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = f"{(tokens - first_tokens) / elapsed:,.1f} tok/s"
            bar.update(task, total=total or None, completed=completed + failed,
                       status=safe(batch["status"]), failed=failed, rate=rate,
                       eta=clock_text(seconds_left(batch, now=time.time())))
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(poll_seconds)
