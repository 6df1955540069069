"""What a file's estimate costs beside the batch validation it extends, per line.

The same in-memory JSONL file goes through, in one process and on one thread:
1. the validation alone, as batch creation runs it (`InputValidator.feed` over every line);
2. the estimate's scan (`FileScan.piece`: that validation, plus each accepted line's request
   parsed, its output bound and its prompt tokens counted).
Each runs once to warm up, then `--rounds` times; the medians and their ratio are printed. The
estimate is measured twice: on the instant engine (prompt tokens from characters) and on the
embedded SmolLM2 (its chat template and tokenizer, for the first 20,000 requests).

    .venv/bin/python bench/estimate.py [--lines 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.batches.validation import InputValidator
from batchd.engines.registry import ModelRegistry, load_registry
from batchd.estimates import FileScan, FileTally
from batchd.serving.endpoints import OPERATIONS

ENDPOINT = "/v1/chat/completions"
MODELS = """
models:
  - id: instant-model
    engine: instant
  - id: smollm2
    engine: llamacpp
    n_ctx: 2048
    parallel: 1
"""


def lines_of(model: str, count: int) -> list[bytes]:
    return [(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": ENDPOINT,
        "body": {"model": model, "max_tokens": 16, "messages": [
            {"role": "system", "content": "Label the sentiment: positive or negative."},
            {"role": "user", "content": f"Review number {i}: the product did what it said."}]},
    }) + "\n").encode() for i in range(count)]


def validator(registry: ModelRegistry, count: int) -> InputValidator:
    return InputValidator(endpoint=ENDPOINT, served_model=registry.served_id,
                          capabilities=registry.capabilities, max_requests=count + 1,
                          chunk_lines=1000, max_listed_errors=100)


def validate_only(registry: ModelRegistry, lines: list[bytes]) -> None:
    check = validator(registry, len(lines))
    for raw in lines:
        check.feed(raw)
    assert check.finish().ok


def estimate(registry: ModelRegistry, lines: list[bytes]) -> None:
    tally = FileTally(endpoint=ENDPOINT, validator=validator(registry, len(lines)))
    scan = FileScan(lines=iter(lines), tally=tally, operation=OPERATIONS[ENDPOINT],
                    registry=registry)
    while not scan.done:
        scan.piece()
    assert tally.validator.finish().ok


def median_seconds(run: Callable[[], None], rounds: int) -> float:
    run()  # warm-up (templates compiled, caches filled)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models.yaml"
        models.write_text(MODELS)
        registry = load_registry(models, created=0)
        asyncio.run(registry.start())
        print(f"{args.lines:,} chat lines, one thread, 1 warm-up + {args.rounds} rounds each "
              "(medians)")
        for model, count in (("instant-model", args.lines),
                             ("smollm2", min(args.lines, 20_000))):
            lines = lines_of(model, count)
            alone = median_seconds(functools.partial(validate_only, registry, lines),
                                   args.rounds)
            scanned = median_seconds(functools.partial(estimate, registry, lines), args.rounds)
            print(f"{model}: {count:,} lines: validation alone {alone * 1e6 / count:.1f} us a "
                  f"line ({count / alone:,.0f} lines/s); estimate {scanned * 1e6 / count:.1f} "
                  f"us a line ({count / scanned:,.0f} lines/s); ratio {scanned / alone:.2f}")
        asyncio.run(registry.aclose())


if __name__ == "__main__":
    main()
