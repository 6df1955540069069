"""What the benchmarks share: run one batch through the real server, start to finish."""

from __future__ import annotations

import time
from pathlib import Path

from openai import OpenAI
from openai.types import Batch

INSTANT_MODELS = "models:\n  - id: instant-model\n    engine: instant\n"


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_batch(client: OpenAI, path: Path, *, window: str = "24h",
              poll_seconds: float = 0.2) -> tuple[Batch, float]:
    """Upload `path`, create a batch, wait for it to end; returns it and the seconds taken."""
    started = time.perf_counter()
    with path.open("rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window=window)  # type: ignore[arg-type]
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(poll_seconds)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - started
    assert batch.status == "completed", batch
    return batch, seconds
