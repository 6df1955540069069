"""What the benchmarks share: run one batch through the real server, start to finish."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from openai import OpenAI
from openai.types import Batch
from tests.e2e.conftest import Server, start_server, stop_server

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


@contextlib.contextmanager
def instant_server(root: Path, **env: str) -> Iterator[Server]:
    """The real server on the instant engine, with worker settings for throughput."""
    (root / "models.yaml").write_text(INSTANT_MODELS)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml",
                          extra_env={"BATCHD_CHUNK_LINES": "1000",
                                     "BATCHD_WORKER_CONCURRENCY": "64",
                                     "BATCHD_MAX_UPLOAD_BYTES": str(1 << 30),
                                     "BATCHD_LOG_LEVEL": "warning", **env})
    try:
        yield server
    finally:
        stop_server(server)
