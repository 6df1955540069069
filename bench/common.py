"""What the benchmarks share: run one batch through the real server, start to finish."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openai import OpenAI
from openai.types import Batch
from tests.support import backends
from tests.support.server import Server, start_server, stop_server

from batchd.settings import Settings

INSTANT_MODELS = "models:\n  - id: instant-model\n    engine: instant\n"
REPO = Path(__file__).resolve().parents[1]


def event_loop_said() -> str:
    """Which loop the batchd processes run on here, for a bench's header: uvicorn picks
    uvloop whenever it is installed, so an earlier commit run beside this one gets it too."""
    import importlib.util
    import os
    name = os.environ.get("BATCHD_EVENT_LOOP", "auto")
    has = importlib.util.find_spec("uvloop") is not None
    loop = "asyncio" if name == "asyncio" or not has else "uvloop"
    there = "installed" if has else "absent"
    return f"event loop {loop} (BATCHD_EVENT_LOOP={name}; uvloop {there})"


@contextlib.contextmanager
def pinned_checkout(rev: str, parent: Path) -> Iterator[Path | None]:
    """An earlier commit's src/ in a temporary `git worktree` of this checkout, to run beside
    this one (None, said why, if git cannot check it out)."""
    where = parent / "pinned"
    made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q",
                           str(where), rev], capture_output=True, text=True)
    if made.returncode != 0:
        print(f"(no side-by-side figure: cannot check out {rev}: {made.stderr.strip()})")
        yield None
        return
    try:
        yield where / "src"
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
                       capture_output=True)


def pinned_env(code: Path) -> dict[str, str]:
    """A server's environment that runs the pinned commit's `code` (its src/, put first)."""
    return {"PYTHONPATH": f"{code}{os.pathsep}{REPO}"}


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_batch(client: OpenAI, path: Path, *, window: str = "24h", poll_seconds: float = 0.2,
              endpoint: str = "/v1/chat/completions") -> tuple[Batch, float]:
    """Upload `path`, create a batch, wait for it to end; returns it and the seconds taken."""
    started = time.perf_counter()
    with path.open("rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window=window)  # type: ignore[arg-type]
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(poll_seconds)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - started
    assert batch.status == "completed", batch
    return batch, seconds


# The test helper makes the worker poll and heartbeat several times a second so tests finish
# fast; a benchmark measures what a user gets, so it puts the defaults back (on this 2-core
# machine the faster polling alone took several percent of the CPU the engine decodes with).
_USER_TIMING = {
    f"BATCHD_{name.upper()}": str(Settings.model_fields[name].default)
    for name in ("poll_seconds", "heartbeat_seconds")
}


@contextlib.contextmanager
def bench_server(root: Path, *, models: Path, **env: str) -> Iterator[Server]:
    """The real server as a user runs it (default worker timing), logging warnings only."""
    server = start_server(root / "data", root / "server.log", models=models,
                          extra_env={**_USER_TIMING, "BATCHD_LOG_LEVEL": "warning", **env})
    try:
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def instant_server(root: Path, **env: str) -> Iterator[Server]:
    """The real server on the instant engine, with worker settings for throughput."""
    (root / "models.yaml").write_text(INSTANT_MODELS)
    with bench_server(root, models=root / "models.yaml", BATCHD_CHUNK_LINES="1000",
                      BATCHD_WORKER_CONCURRENCY="64", BATCHD_MAX_UPLOAD_BYTES=str(1 << 30),
                      **env) as server:
        yield server


def control_plane_args(description: str | None, *, lines: int, upload_mb: int,
                       extra: dict[str, dict[str, Any]] | None = None) -> argparse.Namespace:
    """The options the control-plane benchmarks share (and `extra` ones: flag → keyword
    arguments of `add_argument`); `--backend` is applied at once."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=lines)
    parser.add_argument("--upload-mb", type=int, default=upload_mb)
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    parser.add_argument("--backend", choices=["local", "postgres-s3"], default="local",
                        help="postgres-s3: the server on a PostgreSQL and a SeaweedFS (S3) "
                             "server that this run starts on this machine")
    args = parser.parse_args()
    backends.BACKEND = args.backend
    print(f"backend: {args.backend}")
    return args
