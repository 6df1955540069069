"""Memory benchmark: peak server RSS for a 1,000,000-line batch on the instant engine, and RSS
growth across a 500 MB upload and its download. Prints figures and the targets beside them.

    .venv/bin/python bench/memory.py [--lines 1000000] [--upload-mb 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import instant_server, memory_mb, run_batch
from bench.control_plane import write_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--upload-mb", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, instant_server(
            Path(tmp), BATCHD_MAX_REQUESTS_PER_BATCH=str(args.lines),
            BATCHD_MAX_BATCH_FILE_BYTES=str(1 << 30)) as server:
        root = Path(tmp)
        pid = server.process.pid
        client = OpenAI(base_url=server.base_url, api_key=server.api_key, timeout=600)
        path = root / "input.jsonl"
        write_input(path, args.lines)
        print(f"input: {args.lines:,} lines, {path.stat().st_size / 1e6:.0f} MB; "
              f"server RSS at start {memory_mb(pid):.0f} MB")
        batch, elapsed = run_batch(client, path, window="72h", poll_seconds=1)
        path.unlink()
        peak = memory_mb(pid, "VmHWM")
        print(f"batch: {batch.request_counts.completed:,} completed in {elapsed:.0f} s "  # type: ignore[union-attr]
              f"({args.lines / elapsed:,.0f} requests/s)")
        print(f"peak server RSS for the batch: {peak:.0f} MB (target < 300 MB)")

        blob = root / "big.bin"
        with blob.open("wb") as out:
            piece = b"x" * (1 << 20)
            for _ in range(args.upload_mb):
                out.write(piece)
        before = memory_mb(pid)
        with blob.open("rb") as file:
            big = client.files.create(file=file, purpose="user_data")
        after_upload = memory_mb(pid)
        received = 0
        headers = {"Authorization": f"Bearer {server.api_key}"}
        with httpx.stream("GET", f"{server.base_url}/files/{big.id}/content",
                          headers=headers, timeout=600) as response:
            for chunk in response.iter_bytes():
                received += len(chunk)
        after_download = memory_mb(pid)
        assert received == blob.stat().st_size
        print(f"{args.upload_mb} MB upload: RSS {before:.0f} → {after_upload:.0f} MB; "
              f"download: → {after_download:.0f} MB "
              f"(growth {max(after_upload, after_download) - before:.0f} MB, "
              f"target far below {args.upload_mb} MB)")


if __name__ == "__main__":
    main()
