"""Two tenants on one real-time server: how long the second tenant's small request takes, idle
and while the first tenant runs something big, on the default model (SmolLM2-135M, llama.cpp,
the repository's models.yaml, the server as a subprocess with default settings).

    .venv/bin/python bench/tenants.py [--rounds 3]

Cases (the first tenant's load, then the second tenant's probe):
- completions: one /v1/completions request of 8 prompts x n 16, 48 tokens, temperature 1;
  probe: a 4-token chat.
- embeddings: one /v1/embeddings request of 2,048 inputs; probe: one input.
- huge prompts: six chats of 1 MB each (refused as too long, once tokenized); probes: a
  4-token chat and GET /healthz.
- webhooks: 16 endpoints that never answer, each sent test events (as many as the limit
  lets through); probe: the second tenant's one-line batch, from creation to its
  `batch.completed` event at its receiver.
Each probe runs idle first, then 1 s into the load; medians over the rounds, with the ratio
to idle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.webhook_receiver import Receiver, receiving, silent

from bench.common import bench_server

REPO = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    response = call()
    took = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    return took


def in_background(calls: list[Callable[[], object]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    return threads


def batch_to_webhook(client: httpx.Client, receiver: Receiver) -> float:
    """Seconds from creating a one-line batch to its `batch.completed` at `receiver`."""
    line = json.dumps({"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "Hi."}]}})
    started = time.perf_counter()
    seen = len(receiver.received)
    file_id = client.post("/files", files={"file": ("one.jsonl", line.encode())},
                          data={"purpose": "batch"}).json()["id"]
    client.post("/batches", json={"input_file_id": file_id, "completion_window": "24h",
                                  "endpoint": "/v1/chat/completions"}).raise_for_status()
    if len(receiver.wait_for(seen + 1, timeout=120)) <= seen:
        raise RuntimeError("no batch.completed event within 120 s")
    return time.perf_counter() - started


def webhooks(first: httpx.Client, second: httpx.Client, root_url: str, rounds: int) -> None:
    with receiving() as receiver, contextlib.ExitStack() as stack:
        second.post(f"{root_url}/admin/webhooks", json={
            "url": receiver.url, "events": ["batch.completed"]}).raise_for_status()
        idle = [batch_to_webhook(second, receiver) for _ in range(rounds)]
        hooks = [first.post(f"{root_url}/admin/webhooks", json={
            "url": stack.enter_context(silent())}).json()["id"] for _ in range(16)]
        sent = sum(first.post(f"{root_url}/admin/webhooks/{hooks[i % 16]}/test").status_code
                   == 200 for i in range(48))
        time.sleep(1.0)
        busy = [batch_to_webhook(second, receiver) for _ in range(rounds)]
        alone, behind = statistics.median(idle), statistics.median(busy)
        print(f"{'16 silent webhooks, ' + str(sent) + ' tests':30s} second tenant's "
              f"{'event':9s}: idle {alone:6.3f} s, behind it {behind:6.3f} s, "
              f"ratio {behind / alone:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            bench_server(Path(tmp), models=REPO / "models.yaml",
                         BATCHD_WEBHOOK_ALLOWED_HOSTS="127.0.0.1") as server:
        root_url = server.base_url.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {server.api_key}"}
        first = httpx.Client(base_url=server.base_url, timeout=600, headers=headers)
        secret = first.post(f"{root_url}/admin/keys", json={"name": "second-tenant"}).json()[
            "secret"]
        second = httpx.Client(base_url=server.base_url, timeout=600,
                              headers={"Authorization": f"Bearer {secret}"})
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4, "temperature": 0}
        probes: dict[str, Callable[[], httpx.Response]] = {
            "chat": lambda: second.post("/chat/completions", json=chat),
            "embedding": lambda: second.post("/embeddings",
                                             json={"model": MODEL, "input": "a question"}),
            "healthz": lambda: second.get(f"{root_url}/healthz"),
        }
        loads: dict[str, tuple[list[Callable[[], object]], list[str]]] = {
            "completions 8 prompts x n 16": ([lambda: first.post("/completions", json={
                "model": MODEL, "prompt": [f"Story {i}: once upon a time" for i in range(8)],
                "n": 16, "max_tokens": 48, "temperature": 1})], ["chat"]),
            "embeddings of 2,048 inputs": ([lambda: first.post("/embeddings", json={
                "model": MODEL, "input": [f"document {i} about the weather"
                                          for i in range(2048)]})], ["embedding"]),
            "six 1 MB prompts": ([lambda: first.post("/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "word " * 200_000}],
                "max_tokens": 4})] * 6, ["chat", "healthz"]),
        }
        print(f"settings: default server and models.yaml ({MODEL}, llama.cpp, parallel 16), "
              f"2 tenants, {args.rounds} rounds, probes warmed once before measuring")
        for probe in probes.values():
            timed(probe)  # warm-up
        for load_name, (load, probe_names) in loads.items():
            idle: dict[str, list[float]] = {name: [] for name in probe_names}
            busy: dict[str, list[float]] = {name: [] for name in probe_names}
            for _ in range(args.rounds):
                for name in probe_names:
                    idle[name].append(timed(probes[name]))
                threads = in_background(load)
                time.sleep(1.0)
                for name in probe_names:
                    busy[name].append(timed(probes[name]))
                for thread in threads:
                    thread.join()
            for name in probe_names:
                alone, behind = statistics.median(idle[name]), statistics.median(busy[name])
                print(f"{load_name:30s} second tenant's {name:9s}: idle {alone:6.3f} s, "
                      f"behind it {behind:6.3f} s, ratio {behind / alone:5.1f}")
        webhooks(first, second, root_url, args.rounds)


if __name__ == "__main__":
    main()
