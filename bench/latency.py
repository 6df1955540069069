"""Real-time chat latency on the default model, idle and while a large batch runs.

    .venv/bin/python bench/latency.py [--samples 10] [--batch-requests 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.conftest import REPO

from bench.common import bench_server


def measure(client: OpenAI, samples: int) -> list[float]:
    latencies = []
    for i in range(samples):
        started = time.perf_counter()
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct", max_tokens=16, temperature=0,
            messages=[{"role": "user", "content": f"Give me a word that rhymes with {i}."}])
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with bench_server(root, models=REPO / "models.yaml") as server:
            client = OpenAI(base_url=server.base_url, api_key=server.api_key)
            measure(client, 2)  # warm up
            idle = measure(client, args.samples)
            path = root / "batch.jsonl"
            path.write_text("".join(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "SmolLM2-135M-Instruct", "max_tokens": 64,
                         "messages": [{"role": "user", "content": f"Write about topic {i}."}]},
            }) + "\n" for i in range(args.batch_requests)))
            with path.open("rb") as file:
                uploaded = client.files.create(file=file, purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
            while client.batches.retrieve(batch.id).status != "in_progress":
                time.sleep(0.1)
            time.sleep(2)  # let the batch fill the engine
            busy = measure(client, args.samples)
            counts = client.batches.retrieve(batch.id).request_counts
            client.batches.cancel(batch.id)
            idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
            print(f"real-time p50 idle: {idle_p50 * 1000:.0f} ms; while a "
                  f"{args.batch_requests}-request batch runs: {busy_p50 * 1000:.0f} ms "
                  f"(ratio {busy_p50 / idle_p50:.2f}, target <= 1.5)")
            print(f"batch progress meanwhile: {counts}")


if __name__ == "__main__":
    main()
