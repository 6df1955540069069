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
    TimeRemainingColumn,
)

from batchd.client.api import BatchdClient, ClientError

TERMINAL = ("completed", "failed", "expired", "cancelled")


def done_of(batch: dict[str, Any]) -> tuple[int, int, int]:
    counts = batch.get("request_counts") or {}
    return int(counts.get("completed", 0)), int(counts.get("failed", 0)), int(
        counts.get("total", 0))


def output_tokens(batch: dict[str, Any]) -> int:
    return int((batch.get("usage") or {}).get("output_tokens", 0))


def watch(client: BatchdClient, batch_id: str, console: Console, *,
          poll_seconds: float = 1.0) -> dict[str, Any]:
    """Show the batch's progress until it reaches a final status; returns it then.

    The bar counts finished requests (completed + failed) of the total; beside it: failures,
    generated tokens per second since watching began, elapsed time and the time left at the
    current pace. A brief outage of the server (503) is waited out."""
    columns = (
        TextColumn("[bold]{task.fields[status]:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:>10}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    first_tokens: int | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(batch_id, total=None, status="…", failed=0, rate="")
        while True:
            try:
                batch = client.batch(batch_id)
            except ClientError as exc:
                if exc.status != 503:
                    raise
                time.sleep(poll_seconds)
                continue
            completed, failed, total = done_of(batch)
            tokens = output_tokens(batch)
            first_tokens = tokens if first_tokens is None else first_tokens
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = f"{(tokens - first_tokens) / elapsed:,.1f} tok/s"
            bar.update(task, total=total or None, completed=completed + failed,
                       status=batch["status"], failed=failed, rate=rate)
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(poll_seconds)
