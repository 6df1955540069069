"""Memory benchmark: peak server RSS for a 1,000,000-line batch on the instant engine, RSS
growth across a 500 MB upload and its download, and across four uploads at once that each try
to make the server hold 7,000 form fields of 64 KB (the outside probe's attack: +1.7 GB before
uploads took only their known fields). Prints figures and the targets beside them.

    .venv/bin/python bench/memory.py [--lines 1000000] [--upload-mb 500]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



from bench.common import control_plane_args, instant_server, memory_mb, run_batch
from bench.control_plane import write_input


def main() -> None:
    args = control_plane_args(__doc__, lines=1_000_000, upload_mb=500)
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

        before = memory_mb(pid)
        answers = asyncio.run(field_flood(server.base_url, headers, uploads=4, fields=7000))
        after = memory_mb(pid)
        print(f"4 uploads of 7,000 x 64 KB form fields at once: answered "
              f"{sorted(set(answers))} (0: closed unanswered); "
              f"RSS {before:.0f} → {after:.0f} MB (target: flat)")


async def field_flood(base_url: str, headers: dict[str, str], *, uploads: int,
                      fields: int) -> list[int]:
    """Uploads whose body is mostly unknown form fields, streamed as a client would."""
    field = b"x" * 64_000

    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        for i in range(fields):
            yield (f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode()
                   + field + b"\r\n")
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        yield b"{}\r\n--b--\r\n"

    async with httpx.AsyncClient(timeout=120, headers={
            **headers, "content-type": "multipart/form-data; boundary=b"}) as client:
        async def one() -> int:
            try:
                return (await client.post(f"{base_url}/files", content=body())).status_code
            except httpx.HTTPError:  # closed before an answer was read: say so, as 0
                return 0
        return list(await asyncio.gather(*(one() for _ in range(uploads))))


if __name__ == "__main__":
    main()
