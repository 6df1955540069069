"""Crash loops: a server killed again and again keeps what it finished and fails nothing; a
request that kills the process every time it runs is failed alone, the rest succeed.

Runs with the default checkpoint and attempt settings: what a user gets out of the box.
The first test kills the server 6 times; BATCHD_FAULT_KILLS (10 by default) scales that.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import httpx

from tests.conftest import batch_line
from tests.faults.test_kill9 import TERMINAL, Plug, check_invariants, submit, wait_until

CRASH_MODELS = """
models:
  - id: instant-model
    engine: instant
    delay_seconds: 0.1
    crash_marker: CRASH-ME
"""
ENV = {"BATCHD_WORKER_CONCURRENCY": "8", "BATCHD_POLL_SECONDS": "0.05",
       "BATCHD_HEARTBEAT_SECONDS": "0.2", "BATCHD_LOG_LEVEL": "warning"}


def _plug(tmp_path: Path) -> Plug:
    models = tmp_path / "models.yaml"
    models.write_text(CRASH_MODELS)
    return Plug(tmp_path, models, ENV)


def test_a_server_killed_again_and_again_fails_no_request(tmp_path: Path) -> None:
    seed = int(os.environ.get("BATCHD_FAULT_SEED", random.randrange(1_000_000)))
    print(f"fault seed {seed}")
    rng = random.Random(seed)
    plug = _plug(tmp_path)
    plug.start()
    ids = {f"q{i}" for i in range(600)}  # 0.1 s each, 8 at once: 7.5 s of work
    try:
        with plug.client() as client:
            batch_id = submit(client, [batch_line(cid, f"question {cid}") for cid in sorted(ids)])
            wait_until(client, batch_id, {"in_progress"})
        done_before_kill = []
        for _ in range(max(3, int(os.environ.get("BATCHD_FAULT_KILLS", "10")) * 6 // 10)):
            time.sleep(rng.uniform(0.5, 2.0))
            with plug.client() as client:
                done_before_kill.append(
                    client.get(f"/batches/{batch_id}").json()["request_counts"]["completed"])
            plug.kill()
            plug.start()
        with plug.client() as client:
            batch = wait_until(client, batch_id, TERMINAL, timeout=120)
            assert batch["status"] == "completed", batch
            counts = check_invariants(client, batch_id, ids)
        assert counts == {"total": 600, "completed": 600, "failed": 0}
        print(f"{plug.kills} kills; progress seen before each: {done_before_kill}")
    finally:
        if plug.server is not None and plug.server.process.poll() is None:
            plug.kill()


def test_a_request_that_kills_the_process_is_failed_alone(tmp_path: Path) -> None:
    plug = _plug(tmp_path)
    plug.start()
    ids = {f"q{i}" for i in range(120)}
    lines = [batch_line(f"q{i}", "CRASH-ME now" if i == 57 else f"question {i}")
             for i in range(120)]
    try:
        with plug.client() as client:
            batch_id = submit(client, lines)
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "the batch never finished"
            assert plug.kills < 10, "the poison request was never given up"
            assert plug.server is not None
            if plug.server.process.poll() is not None:  # it died: restart it, as systemd
                plug.kills += 1
                try:
                    plug.start()
                except RuntimeError:  # died again before it answered its health check
                    continue
            with plug.client() as client:
                try:
                    batch = client.get(f"/batches/{batch_id}").json()
                except httpx.HTTPError:
                    continue  # died while answering
                if batch["status"] in TERMINAL:
                    break
            time.sleep(0.05)
        with plug.client() as client:
            counts = check_invariants(client, batch_id, ids)
            assert batch["status"] == "completed"
            assert counts == {"total": 120, "completed": 119, "failed": 1}
            errors = client.get(f"/files/{batch['error_file_id']}/content").text
        assert '"custom_id":"q57"' in errors and "request_failed" in errors
        assert "died while running it, alone" in errors
        print(f"the poison request killed the server {plug.kills} times")
    finally:
        if plug.server is not None and plug.server.process.poll() is None:
            plug.kill()
