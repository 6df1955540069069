"""Control-plane benchmark: a 50,000-line batch on the instant engine, create → completed, and
upload throughput for a 200 MB file. Runs the real server as a subprocess and prints requests/s,
MB/s and the server's peak RSS (VmHWM).

    .venv/bin/python bench/control_plane.py [--lines 50000] [--upload-mb 200]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



from bench.common import control_plane_args, instant_server, memory_mb, run_batch


def write_input(path: Path, lines: int) -> None:
    with path.open("w") as out:
        for i in range(lines):
            out.write(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "instant-model", "max_tokens": 16,
                         "messages": [{"role": "user", "content": f"question number {i}"}]},
            }) + "\n")


def main() -> None:
    args = control_plane_args(__doc__, lines=50_000, upload_mb=200)
    with tempfile.TemporaryDirectory() as tmp, \
            instant_server(Path(tmp), BATCHD_WORKER_CHUNKS="4") as server:
        root = Path(tmp)
        client = OpenAI(base_url=server.base_url, api_key=server.api_key)
        path = root / "input.jsonl"
        write_input(path, args.lines)
        batch, elapsed = run_batch(client, path, poll_seconds=0.05)
        assert batch.request_counts is not None
        print(f"batch: {args.lines} lines in {elapsed:.2f} s "
              f"= {args.lines / elapsed:,.0f} requests/s "
              f"(completed {batch.request_counts.completed})")
        peak = memory_mb(server.process.pid, "VmHWM")
        print(f"server peak RSS after the batch: {peak:.0f} MB")

        blob = root / "upload.jsonl"
        line = b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{}}\n'
        with blob.open("wb") as out:
            for _ in range(args.upload_mb * 1024 * 1024 // len(line)):
                out.write(line)
        size_mb = blob.stat().st_size / 1e6
        started = time.perf_counter()
        with blob.open("rb") as file:
            client.files.create(file=file, purpose="user_data")
        elapsed = time.perf_counter() - started
        print(f"upload: {size_mb:.0f} MB in {elapsed:.2f} s = {size_mb / elapsed:.0f} MB/s")
        peak = memory_mb(server.process.pid, "VmHWM")
        print(f"server peak RSS after the upload: {peak:.0f} MB")


if __name__ == "__main__":
    main()
