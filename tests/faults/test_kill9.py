"""Pull the plug: kill -9 the whole server at seeded random moments (and on purpose during
validation and finalizing), restart it, and check that every batch ends with each custom_id
exactly once across its output and error files, counts that match, and whole files.

BATCHD_FAULT_KILLS sets the number of random kill points (default 10); BATCHD_FAULT_SEED the
seed (default: random, printed so a failure can be replayed).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import batch_line
from tests.e2e.conftest import REPO, Server, start_server, stop_server
from tests.services import query_one

pytestmark = pytest.mark.faults

FAULT_MODELS = """
models:
  - id: instant-model
    engine: instant
    delay_seconds: 0.002
    fail_marker: FAIL-ME
"""
FAULT_ENV = {
    "BATCHD_CHUNK_LINES": "50", "BATCHD_CHECKPOINT_SECONDS": "0.2",
    "BATCHD_HEARTBEAT_SECONDS": "0.1", "BATCHD_POLL_SECONDS": "0.05",
    "BATCHD_WORKER_CONCURRENCY": "16", "BATCHD_LOG_LEVEL": "warning",
}
TERMINAL = {"completed", "failed", "cancelled", "expired"}


class Plug:
    """Starts the server, pulls its plug, starts it again."""

    def __init__(self, root: Path, models: Path, env: dict[str, str]) -> None:
        self.root, self.models, self.env = root, models, env
        self.server: Server | None = None
        self.kills = 0

    def start(self) -> Server:
        self.server = start_server(self.root / "data", self.root / "server.log",
                                   models=self.models, extra_env=self.env)
        return self.server

    def kill(self) -> None:
        assert self.server is not None
        self.server.process.kill()  # SIGKILL: no shutdown code runs
        self.server.process.wait()
        self.kills += 1

    def client(self) -> httpx.Client:
        assert self.server is not None
        return httpx.Client(base_url=self.server.base_url, timeout=30,
                            headers={"Authorization": f"Bearer {self.server.api_key}"})


def submit(client: httpx.Client, lines: list[str]) -> str:
    data = ("\n".join(lines) + "\n").encode()
    file_id = client.post("/files", files={"file": ("in.jsonl", data)},
                          data={"purpose": "batch"}).json()["id"]
    batch = client.post("/batches", json={"input_file_id": file_id, "completion_window": "24h",
                                          "endpoint": "/v1/chat/completions"}).json()
    return str(batch["id"])


def status_of(client: httpx.Client, batch_id: str) -> str:
    return str(client.get(f"/batches/{batch_id}").json()["status"])


def wait_until(client: httpx.Client, batch_id: str, statuses: set[str],
               timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        time.sleep(0.005)
    raise AssertionError(f"{batch_id} never reached {statuses}: {batch}")


def wait_for_lease(data_dir: Path, batch_id: str, timeout: float = 30) -> None:
    """Until a worker holds the batch's lease (it is validating it now); read from the
    database itself, as no API shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query_one(data_dir, f"SELECT lease_owner FROM batches WHERE id = '{batch_id}'"):
            return
        time.sleep(0.005)
    raise AssertionError(f"{batch_id} was never leased for validation")


def check_invariants(client: httpx.Client, batch_id: str, expected: set[str]) -> dict[str, int]:
    batch = client.get(f"/batches/{batch_id}").json()
    assert batch["status"] in TERMINAL, batch
    # Cancelled while still validating too: every request is reported (batch_cancelled).
    seen: list[str] = []
    n_lines = {}
    for kind in ("output_file_id", "error_file_id"):
        file_id = batch[kind]
        if file_id is None:
            n_lines[kind] = 0
            continue
        meta = client.get(f"/files/{file_id}").json()
        content = client.get(f"/files/{file_id}/content").content
        assert meta["bytes"] == len(content)  # whole files only
        lines = content.splitlines()
        n_lines[kind] = len(lines)
        seen += [json.loads(line)["custom_id"] for line in lines]  # every line parses
    duplicates = {cid for cid in seen if seen.count(cid) > 1}
    assert not duplicates, f"{batch_id}: duplicated custom_ids {sorted(duplicates)[:5]}"
    assert set(seen) == expected, f"{batch_id}: missing {sorted(expected - set(seen))[:5]}"
    counts = batch["request_counts"]
    assert counts == {"total": len(expected), "completed": n_lines["output_file_id"],
                      "failed": n_lines["error_file_id"]}
    return counts


def test_kill_nine_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("BATCHD_FAULT_SEED", random.randrange(1_000_000)))
    kills = int(os.environ.get("BATCHD_FAULT_KILLS", "10"))
    print(f"fault seed {seed}, {kills} random kill points")
    rng = random.Random(seed)
    models = tmp_path / "models.yaml"
    models.write_text(FAULT_MODELS)
    plug = Plug(tmp_path, models, FAULT_ENV)
    plug.start()
    expected: dict[str, set[str]] = {}
    phases_hit: set[str] = set()
    try:
        with plug.client() as client:
            # Kill during validation of a large file, and during its finalizing.
            big = [batch_line(f"big-{i}", f"item {i}") for i in range(20_000)]
            big_id = submit(client, big)
            expected[big_id] = {f"big-{i}" for i in range(20_000)}
            wait_for_lease(plug.root / "data", big_id)  # validation has begun, not just queued
            assert status_of(client, big_id) == "validating"
            plug.kill()
            phases_hit.add("validating")
        plug.start()
        with plug.client() as client:
            batch = wait_until(client, big_id, {"finalizing"} | TERMINAL)
            if batch["status"] == "finalizing":
                plug.kill()
                phases_hit.add("finalizing")
        for round_no in range(kills):
            plug.start()
            with plug.client() as client:
                lines = [batch_line(f"r{round_no}-{i}",
                                    "FAIL-ME" if i % 17 == 0 else f"question {i}")
                         for i in range(rng.randrange(50, 400))]
                batch_id = submit(client, lines)
                expected[batch_id] = {f"r{round_no}-{i}" for i in range(len(lines))}
                if round_no % 4 == 3:  # some batches are cancelled around the crash
                    time.sleep(rng.uniform(0, 0.3))
                    client.post(f"/batches/{batch_id}/cancel")
                time.sleep(rng.uniform(0.05, 1.0))
                phases_hit.add(status_of(client, batch_id))
            plug.kill()
        plug.start()
        with plug.client() as client:
            for batch_id, ids in expected.items():
                wait_until(client, batch_id, TERMINAL, timeout=120)
                check_invariants(client, batch_id, ids)
    finally:
        if plug.server is not None and plug.server.process.poll() is None:
            stop_server(plug.server)
    print(f"{plug.kills} kills; phases at kill time: {sorted(phases_hit)}")
    assert plug.kills >= kills + 1


def test_kill_nine_with_the_real_model(tmp_path: Path) -> None:
    plug = Plug(tmp_path, REPO / "models.yaml",
                {**FAULT_ENV, "BATCHD_CHUNK_LINES": "4", "BATCHD_CHECKPOINT_SECONDS": "0.5"})
    plug.start()
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "SmolLM2-135M-Instruct", "max_tokens": 6,
                                  "temperature": 0,
                                  "messages": [{"role": "user", "content": f"Say {i}."}]}})
             for i in range(16)]
    try:
        with plug.client() as client:
            batch_id = submit(client, lines)
            wait_until(client, batch_id, {"in_progress"})
            time.sleep(1.5)
            plug.kill()
        plug.start()
        with plug.client() as client:
            time.sleep(1.0)
        plug.kill()
        plug.start()
        with plug.client() as client:
            batch = wait_until(client, batch_id, TERMINAL, timeout=120)
            assert batch["status"] == "completed"
            counts = check_invariants(client, batch_id, {f"q{i}" for i in range(16)})
            assert counts["completed"] == 16
    finally:
        if plug.server is not None and plug.server.process.poll() is None:
            stop_server(plug.server)
