"""What counting real-time usage costs per request: the same app, process and requests with
the usage meter on, and with it replaced by a no-op (the path without it), alternated.

The app runs in process on SQLite (the embedded default's store) behind httpx's ASGI
transport, the instant engine answering at once, so that what is measured is batchd's own
work per request. Each round sends `--requests` chat requests, `--concurrency` at a time:
whole answers, then streams (without a usage chunk for the client). One warm-up round each.

    .venv/bin/python bench/realtime_usage.py [--requests 2000] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.api.usage_meter import UsageMeter
from batchd.app import create_app
from batchd.settings import Settings

KEY = "sk-bench"
MODELS = "models:\n  - id: instant-model\n    engine: instant\n"
METERED = UsageMeter.add


async def unmetered(self: UsageMeter, **counts: Any) -> None:
    """The meter replaced: nothing recorded."""


async def round_seconds(client: httpx.AsyncClient, *, requests: int, concurrency: int,
                        stream: bool) -> float:
    body = {"model": "instant-model", "stream": stream,
            "messages": [{"role": "user", "content": "count these few words please"}]}
    room = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with room:
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    return time.perf_counter() - started


async def measure(args: argparse.Namespace, root: Path) -> None:
    (root / "models.yaml").write_text(MODELS)
    settings = Settings(data_dir=root / "data", models=root / "models.yaml", api_key=KEY,
                        embedded_worker=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://batchd",
            headers={"Authorization": f"Bearer {KEY}"}) as client:
        for stream in (False, True):
            times: dict[str, list[float]] = {"metered": [], "unmetered": []}
            meters: dict[str, Callable[..., Awaitable[None]]] = {
                "metered": METERED, "unmetered": unmetered}
            for n in range(args.rounds + 1):
                for name, meter in meters.items():
                    UsageMeter.add = meter  # type: ignore[method-assign]
                    seconds = await round_seconds(client, requests=args.requests,
                                                  concurrency=args.concurrency, stream=stream)
                    if n:  # the first round of each is the warm-up
                        times[name].append(seconds)
            UsageMeter.add = METERED  # type: ignore[method-assign]
            on, off = (statistics.median(times[k]) for k in ("metered", "unmetered"))
            kind = "streams" if stream else "whole answers"
            print(f"{kind}: metered {on * 1e6 / args.requests:,.0f} us a request "
                  f"({args.requests / on:,.0f}/s), unmetered {off * 1e6 / args.requests:,.0f} "
                  f"us ({args.requests / off:,.0f}/s): the meter costs "
                  f"{(on - off) * 1e6 / args.requests:,.0f} us a request, ratio {off / on:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)  # a key's real-time limit
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"in process, SQLite, instant engine, {args.requests:,} chat requests "
          f"{args.concurrency} at a time, 1 warm-up + {args.rounds} rounds alternated (medians)")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
