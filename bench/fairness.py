"""Head-of-line benchmark: how long a 10-line batch of a second owner takes while a big batch
of the first owner runs on the same model, and how long a healthy model's batch takes while
another model is stalled. Runs the real server as a subprocess (instant engine standing in for
a real model: 0.5 s a request, 16 at once, so a 256-line chunk takes 8 s as on a CPU model).

    .venv/bin/python bench/fairness.py [--big 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_server

MODELS = """models:
  - id: slow-model
    engine: instant
    delay_seconds: 0.5
    concurrency: 16
  - id: stalled-model
    engine: instant
    hang_marker: HANGME
  - id: healthy-model
    engine: instant
"""


def lines(prefix: str, n: int, model: str, content: str = "question") -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"{content} {i}"}]},
    }).encode() + b"\n" for i in range(n))


def submit(client: httpx.Client, data: bytes) -> str:
    file_id = client.post("/files", files={"file": ("in.jsonl", data)},
                          data={"purpose": "batch"}).json()["id"]
    return str(client.post("/batches", json={"input_file_id": file_id,
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).json()["id"])


def wait(client: httpx.Client, batch_id: str) -> float:
    started = time.perf_counter()
    while client.get(f"/batches/{batch_id}").json()["status"] not in (
            "completed", "failed", "cancelled", "expired"):
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(MODELS)
        with bench_server(root, models=root / "models.yaml") as server:
            admin = httpx.Client(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {server.api_key}"})
            root_url = server.base_url.removesuffix("/v1")
            created = admin.post(f"{root_url}/admin/keys", json={"name": "second-owner"})
            assert created.status_code == 200, created.text
            secret = created.json()["secret"]
            other = httpx.Client(base_url=server.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {secret}"})
            print("settings: defaults (chunk 256 lines, 2 chunks per model, poll 0.5 s); "
                  "slow-model 0.5 s a request, 16 at once")
            big = submit(admin, lines("big", args.big, "slow-model"))
            time.sleep(2.0)
            small_started = time.perf_counter()
            small = submit(other, lines("small", 10, "slow-model"))
            wait(other, small)
            small_took = time.perf_counter() - small_started
            big_left = wait(admin, big)
            print(f"fairness: 10-line batch of a second owner, created 2 s into a "
                  f"{args.big}-line batch on the same model: done in {small_took:.1f} s; "
                  f"the big batch ended {big_left:.1f} s after that")
            hung = [submit(admin, lines(f"hung{b}", 3, "stalled-model", "HANGME"))
                    for b in range(3)]
            time.sleep(1.0)
            healthy = submit(admin, lines("healthy", 5, "healthy-model"))
            took = wait(admin, healthy)
            print(f"head-of-line: 5-line batch on a healthy model while 3 batches hang on "
                  f"another: done in {took:.1f} s")
            for batch_id in hung:
                admin.post(f"/batches/{batch_id}/cancel")


if __name__ == "__main__":
    main()
