"""Real-time latency and batch throughput sharing the default model.

1. real-time p50 idle (16-token chats, one at a time);
2. a batch alone: its generated tokens/s;
3. the same batch again while real-time chats arrive at a steady rate (one a second, 16
   tokens each, about a fifth of this CPU's decode capacity): the batch's tokens/s and the
   real-time p50 meanwhile.

Targets: real-time p50 under load <= 1.5x idle, and batch throughput >= 0.5x its idle rate.

    .venv/bin/python bench/latency.py [--samples 10] [--batch-requests 120] [--rate 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import REPO

from bench.common import bench_server, run_batch

MODEL = "SmolLM2-135M-Instruct"


def chat(client: OpenAI, i: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": f"Give me a word that rhymes with {i}."}])
    return time.perf_counter() - started


def steady(client: OpenAI, rate: float, stop: threading.Event, out: list[float]) -> None:
    """One chat every 1/rate seconds (each on its own thread, so a slow one does not delay
    the next arrival), until `stop`."""
    threads = []
    n = 0
    while not stop.wait(1 / rate):
        n += 1
        thread = threading.Thread(target=lambda i=n: out.append(chat(client, i)))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-requests", type=int, default=120)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with bench_server(root, models=REPO / "models.yaml") as server:
            client = OpenAI(base_url=server.base_url, api_key=server.api_key)
            for i in range(2):
                chat(client, i)  # warm up
            idle = [chat(client, i) for i in range(args.samples)]
            path = root / "batch.jsonl"
            path.write_text("".join(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": MODEL, "max_tokens": 64, "temperature": 0,
                         "messages": [{"role": "user", "content": f"Write about topic {i}."}]},
            }) + "\n" for i in range(args.batch_requests)))
            alone, seconds = run_batch(client, path)
            assert alone.usage is not None
            alone_rate = alone.usage.output_tokens / seconds
            stop, busy = threading.Event(), list[float]()
            feeder = threading.Thread(target=steady, args=(client, args.rate, stop, busy))
            feeder.start()
            shared, seconds = run_batch(client, path)
            stop.set()
            feeder.join()
            assert shared.usage is not None
            shared_rate = shared.usage.output_tokens / seconds
            idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
            print(f"settings: default model and worker settings; real-time chats of 16 "
                  f"tokens; batch of {args.batch_requests} requests of up to 64 tokens")
            print(f"real-time p50 idle: {idle_p50 * 1000:.0f} ms; with the batch running and "
                  f"{args.rate:g} chat/s: {busy_p50 * 1000:.0f} ms over {len(busy)} chats "
                  f"(ratio {busy_p50 / idle_p50:.2f}, target <= 1.5)")
            print(f"batch alone: {alone_rate:.1f} gen tok/s; with {args.rate:g} real-time "
                  f"chat/s: {shared_rate:.1f} gen tok/s (ratio {shared_rate / alone_rate:.2f}, "
                  f"target >= 0.5)")


if __name__ == "__main__":
    main()
