"""`batchd usage`: who used how much, from the Usage API, as a table (or `--json`)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from batchd.client.commands import (
    ApiKey,
    AsJson,
    BaseUrl,
    _client,
    _fail,
    _out,
    _print_json,
    one_line_errors,
)
from batchd.client.terminal import print_table

# --by names, and the Usage API's group_by (batchd's owner is OpenAI's project).
BY = {"model": "model", "key": "api_key_id", "owner": "project_id", "batch": "batch"}
UNITS = {"m": 60, "h": 3600, "d": 86400}


def since_seconds(since: str, now: float) -> int:
    """`7d`, `24h`, `30m`, or a date (2026-12-01) or time (2026-12-01T12:00) in UTC."""
    relative = re.fullmatch(r"(\d+)([mhd])", since)
    if relative:
        return int(now) - int(relative[1]) * UNITS[relative[2]]
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise typer.BadParameter(f"{since!r}: use 7d, 24h, 30m or a date such as 2026-12-01",
                                 param_hint="--since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


@one_line_errors
def usage(
    since: Annotated[str, typer.Option(help="From when: 7d, 24h, 30m or a UTC date.")] = "7d",
    by: Annotated[list[str] | None, typer.Option(
        help="Group by model, key, owner or batch (batch against real time); repeatable.")
    ] = None,
    width: Annotated[str, typer.Option(help="Bucket width: 1d, 1h or 1m.")] = "1d",
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="Embeddings' usage rather than completions'.")] = False,
    as_json: AsJson = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Requests and tokens per day (or hour, minute), grouped as asked: an admin key sees
    every owner's, a user key its own."""
    groups = []
    for name in by or []:
        if name not in BY:
            _fail(f"--by {name!r}: use one of {', '.join(BY)}", status=2)
        groups.append(BY[name])
    if embeddings and "batch" in groups:
        _fail("--by batch: embeddings' usage has no batch dimension", status=2)
    kind = "embeddings" if embeddings else "completions"
    limit = {"1d": 31, "1h": 168, "1m": 1440}.get(width)
    if limit is None:
        _fail(f"--width {width!r}: use 1d, 1h or 1m", status=2)
    step = {"1d": 86400, "1h": 3600, "1m": 60}[width]
    start = since_seconds(since, time.time()) // step * step  # whole UTC days (hours…)
    params: dict[str, Any] = {"start_time": start, "bucket_width": width, "limit": limit,
                              "group_by": groups}
    with _client(base_url, api_key) as client:
        pages = list(client.usage_pages(kind, params))
    buckets = [bucket for page in pages for bucket in page["data"]]
    if as_json:
        _print_json(buckets)
        return
    names = [name for name, group in BY.items() if group in groups]
    fmt = "%Y-%m-%d" if width == "1d" else "%Y-%m-%d %H:%M"
    rows: list[tuple[object, ...]] = []
    totals = [0, 0, 0, 0]
    for bucket in buckets:
        when = datetime.fromtimestamp(bucket["start_time"], UTC).strftime(fmt)
        for result in bucket["results"]:
            counts = [result["num_model_requests"], result["input_tokens"],
                      result.get("input_cached_tokens", 0), result.get("output_tokens", 0)]
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
            labels = [_label(name, result[BY[name]]) for name in names]
            rows.append((when, *labels, *(f"{n:,}" for n in counts)))
    if not rows:
        _out().print("no usage in that time")
        return
    rows.append(("total", *([""] * len(names)), *(f"{n:,}" for n in totals)))
    print_table(_out(), ("from", *names, "requests", "input", "cached", "output"), rows)


def _label(name: str, value: object) -> str:
    if name == "batch":
        return "batch" if value else "real time"
    return "-" if value is None else str(value)
