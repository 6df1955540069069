"""Scale-out benchmark: 1, 2 and 4 `batchd worker` processes on PostgreSQL + S3.

The instant engine with a fixed per-request delay stands in for a GPU server that each worker
fills (`--concurrency` requests at once, `--delay` seconds each), so a worker's capacity is
known and the question is only whether adding workers adds throughput: scaling efficiency =
(requests/s with W workers) / (W x requests/s with one). Every run gets a fresh database and
bucket prefix on the same PostgreSQL and SeaweedFS servers, the same batch, the same settings
(default worker timing, `BATCHD_CHUNK_LINES=64`), and one API process (`serve --no-worker`).
Timed from batch creation to `completed`, polled every 0.1 s.

    .venv/bin/python bench/scale.py [--requests 4096] [--delay 0.25] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.backends import PostgresServer, S3Server, running
from tests.support.ports import free_port, wait_for_http

API_KEY = "sk-bench-scale"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4096)
    parser.add_argument("--delay", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{args.requests} requests; instant engine: {args.delay} s a request, "
          f"{args.concurrency} at once per worker (ideal {args.concurrency / args.delay:.0f} "
          f"requests/s per worker); chunk_lines=64; {os.cpu_count()} cores shared by "
          "PostgreSQL, SeaweedFS, the API and the workers")
    rates: dict[int, float] = {}
    with running(PostgresServer) as pg, running(S3Server) as s3, \
            tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = root / "models.yaml"
        models.write_text("models:\n  - id: instant-model\n    engine: instant\n"
                          f"    delay_seconds: {args.delay}\n"
                          f"    concurrency: {args.concurrency}\n")
        batch_file = root / "input.jsonl"
        with batch_file.open("w") as out:
            for n in range(args.requests):
                out.write(json.dumps({
                    "custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "instant-model",
                             "messages": [{"role": "user", "content": f"question {n}"}]},
                }) + "\n")
        for workers in args.workers:
            env = {**os.environ, **s3.environment(), "BATCHD_DATABASE_URL": pg.create_database(),
                   "BATCHD_BLOB_URL": f"s3://{s3.bucket}/scale-{workers}",
                   "BATCHD_API_KEY": API_KEY, "BATCHD_MODELS": str(models),
                   "BATCHD_CHUNK_LINES": "64", "BATCHD_LOG_LEVEL": "warning"}
            rates[workers] = run(root / f"w{workers}", env, workers, batch_file,
                                 args.requests)
            line = f"{workers} worker(s): {rates[workers]:,.1f} requests/s"
            if workers != args.workers[0]:
                base = rates[args.workers[0]] / args.workers[0]
                line += (f"  ({rates[workers] / rates[args.workers[0]]:.2f}x; efficiency "
                         f"{rates[workers] / (workers * base):.2f})")
            print(line, flush=True)


def run(root: Path, env: dict[str, str], workers: int, batch_file: Path, n: int) -> float:
    root.mkdir()
    port = free_port()
    batchd = [sys.executable, "-m", "batchd"]
    processes = []
    try:
        subprocess.run([*batchd, "migrate", "--data-dir", str(root / "api")], env=env,
                       check=True, capture_output=True)
        commands = [[*batchd, "serve", "--no-worker", "--port", str(port),
                     "--data-dir", str(root / "api")]]
        commands += [[*batchd, "worker", "--data-dir", str(root / f"worker-{w}")]
                     for w in range(workers)]
        for number, command in enumerate(commands):
            with (root / f"{number}.log").open("wb") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))
        assert wait_for_http(f"http://127.0.0.1:{port}/healthz", process=processes[0])
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
        with batch_file.open("rb") as file:
            uploaded = client.files.create(file=file, purpose="batch")
        time.sleep(2)  # every worker is up and idle
        started = time.perf_counter()
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.1)
            batch = client.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - started
        assert batch.status == "completed" and batch.request_counts is not None
        assert batch.request_counts.completed == n, batch.request_counts
        return n / elapsed
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
