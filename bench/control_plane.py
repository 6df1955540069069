"""Control-plane benchmark: a 50,000-line batch on the instant engine, create → completed, and
upload throughput for a 200 MB file. Runs the real server as a subprocess and prints
requests/s, the server's CPU per line (user + system, from /proc), the time spent in each
phase (validating, running, finalizing), and the server's peak RSS (VmHWM).

The batch also runs on a pinned earlier commit (`--against`, by default the last one measured
before a regression was found), side by side: rounds alternate between the two, on the same
machine, script, settings and input, and the medians and their ratio are printed, so that a
regression shows up in the run of the commit that causes it. The pinned commit's code comes
from a `git worktree` of this checkout (its `src/` put first on the server's PYTHONPATH).

    .venv/bin/python bench/control_plane.py [--lines 50000] [--upload-mb 200]
        [--against 907a8e6 | --against none] [--rounds 3]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import (
    control_plane_args,
    event_loop_said,
    instant_server,
    memory_mb,
    pinned_checkout,
    pinned_env,
)

# The last commit measured before the control plane lost half its speed (issue #28).
PINNED = "907a8e6"


def write_input(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for i in range(lines):
            out.write(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "instant-model", "max_tokens": 16,
                         "messages": [{"role": "user", "content": f"question number {i}"}]},
            }) + "\n")


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU so far, read the same way for every contender."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    rate: float  # requests/s, create → completed
    cpu_us: float  # server CPU per line
    phases: dict[str, float]  # seconds from one status to the next
    peak_mb: float


def batch_round(root: Path, input_path: Path, lines: int, code: Path | None) -> Round:
    """One batch through a fresh server; `code`: the src/ to run it on (None: this one)."""
    env = pinned_env(code) if code else {}
    root.mkdir(parents=True, exist_ok=True)
    with instant_server(root, BATCHD_WORKER_CHUNKS="4", **env) as server:
        client = OpenAI(base_url=server.base_url, api_key=server.api_key)
        with input_path.open("rb") as file:
            uploaded = client.files.create(file=file, purpose="batch")
        pid = server.process.pid
        started, cpu_before = time.perf_counter(), cpu_seconds(pid)
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        phases: dict[str, float] = {}
        status, since = batch.status, started
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.02)
            batch = client.batches.retrieve(batch.id)
            if batch.status != status:
                now = time.perf_counter()
                phases[status] = phases.get(status, 0.0) + now - since
                status, since = batch.status, now
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        assert batch.status == "completed" and batch.request_counts is not None, batch
        assert batch.request_counts.completed == lines, batch
        return Round(rate=lines / elapsed, cpu_us=cpu / lines * 1e6, phases=phases,
                     peak_mb=memory_mb(pid, "VmHWM"))


def describe(name: str, rounds: list[Round]) -> float:
    rates = [r.rate for r in rounds]
    rate = statistics.median(rates)
    phases = {k: statistics.median(r.phases.get(k, 0.0) for r in rounds)
              for k in ("validating", "in_progress", "finalizing")}
    print(f"{name}: median {rate:,.0f} requests/s (rounds: "
          + ", ".join(f"{r:,.0f}" for r in rates)
          + f"); server CPU {statistics.median(r.cpu_us for r in rounds):.0f} us a line; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
          + f"; peak RSS {max(r.peak_mb for r in rounds):.0f} MB")
    return rate


def main() -> None:
    args = control_plane_args(__doc__, lines=50_000, upload_mb=200, extra={
        "--against": dict(default=PINNED, help="an earlier commit to run side by side "
                                               "('none': skip)"),
        "--rounds": dict(type=int, default=3, help="batches on each side, alternated")})
    print(f"instant engine, {args.lines} lines, BATCHD_CHUNK_LINES=1000, "
          f"BATCHD_WORKER_CONCURRENCY=64, BATCHD_WORKER_CHUNKS=4, default worker timing; "
          f"{event_loop_said()}, for both commits")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "input.jsonl"
        write_input(path, args.lines)
        against = None if args.against == "none" else args.against
        with (pinned_checkout(against, root) if against else contextlib.nullcontext()) as old:
            ours: list[Round] = []
            theirs: list[Round] = []
            for n in range(args.rounds):
                ours.append(batch_round(root / f"ours-{n}", path, args.lines, None))
                if old is not None:
                    theirs.append(batch_round(root / f"pinned-{n}", path, args.lines, old))
        rate = describe("batch, this checkout", ours)
        if theirs:
            earlier = describe(f"batch, {against} (same script, alternated)", theirs)
            print(f"ratio this checkout / {against}: {rate / earlier:.2f}")
        upload(root, args.upload_mb)


def upload(root: Path, megabytes: int) -> None:
    (root / "upload").mkdir()
    with instant_server(root / "upload") as server:
        client = OpenAI(base_url=server.base_url, api_key=server.api_key)
        blob = root / "upload.jsonl"
        line = b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{}}\n'
        with blob.open("wb") as out:
            for _ in range(megabytes * 1024 * 1024 // len(line)):
                out.write(line)
        size_mb = blob.stat().st_size / 1e6
        started = time.perf_counter()
        with blob.open("rb") as file:
            client.files.create(file=file, purpose="user_data")
        elapsed = time.perf_counter() - started
        print(f"upload: {size_mb:.0f} MB in {elapsed:.2f} s = {size_mb / elapsed:.0f} MB/s; "
              f"server peak RSS {memory_mb(server.process.pid, 'VmHWM'):.0f} MB")


if __name__ == "__main__":
    main()
