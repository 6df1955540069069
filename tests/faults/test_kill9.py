"""Pull the plug: kill -9 the whole server at seeded random moments (and on purpose during
validation and finalizing), restart it, and check that every batch ends with each custom_id
exactly once across its output and error files, counts that match, and whole files; and that
the usage recorded equals that of every output line and real-time answer, to the token.

BATCHD_FAULT_KILLS sets the number of random kill points (default 10); BATCHD_FAULT_SEED the
seed (default: random, printed so a failure can be replayed).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import httpx
import pytest

from tests.support.backends import query_one
from tests.support.faults import FAULT_ENV, TERMINAL, Plug, check_invariants, submit, wait_until
from tests.support.lines import batch_line
from tests.support.server import REPO, stop_server

pytestmark = pytest.mark.faults

FAULT_MODELS = """
models:
  - id: instant-model
    engine: instant
    delay_seconds: 0.002
    fail_marker: FAIL-ME
"""


def status_of(client: httpx.Client, batch_id: str) -> str:
    return str(client.get(f"/batches/{batch_id}").json()["status"])


def wait_for_lease(data_dir: Path, batch_id: str, timeout: float = 30) -> None:
    """Until a worker holds the batch's lease (it is validating it now); read from the
    database itself, as no API shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query_one(data_dir, f"SELECT lease_owner FROM batches WHERE id = '{batch_id}'"):
            return
        time.sleep(0.005)
    raise AssertionError(f"{batch_id} was never leased for validation")


def check_usage(client: httpx.Client, batch_ids: list[str],
                real_time: list[dict[str, int]]) -> None:
    """The usage the Usage API reports equals, to the token, the `usage` of every line in
    the batches' output files and of every real-time answer: nothing counted twice across
    the kills, nothing lost."""
    lines = []
    for batch_id in batch_ids:
        output = client.get(f"/batches/{batch_id}").json()["output_file_id"]
        if output:
            lines += [json.loads(line)["response"]["body"]["usage"]
                      for line in client.get(f"/files/{output}/content").text.splitlines()]
    page = client.get("/organization/usage/completions", params={
        "start_time": int(time.time()) - 2 * 86400, "bucket_width": "1d", "limit": 3,
        "group_by": "batch"}).json()
    got = {r["batch"]: r for bucket in page["data"] for r in bucket["results"]}
    for batch, usages in ((True, lines), (False, real_time)):
        assert got[batch]["num_model_requests"] == len(usages)
        assert got[batch]["input_tokens"] == sum(u["prompt_tokens"] for u in usages)
        assert got[batch]["output_tokens"] == sum(u["completion_tokens"] for u in usages)


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
    real_time: list[dict[str, int]] = []  # the usage of every real-time answer received
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
                real_time.append(client.post("/chat/completions", json={
                    "model": "instant-model", "messages": [
                        {"role": "user", "content": f"real time {round_no}"}]}
                ).json()["usage"])
                if round_no % 4 == 3:  # some batches are cancelled around the crash
                    time.sleep(rng.uniform(0, 0.3))
                    client.post(f"/batches/{batch_id}/cancel")
                time.sleep(rng.uniform(0.05, 1.0))
                phases_hit.add(status_of(client, batch_id))
            plug.kill()
        plug.start()
        # Every kill struck a live server (Plug.kill checks), and left that life's crash file;
        # the server now running read each of them at start-up: only its own is left.
        assert len(list((tmp_path / "data" / "lives").glob("*.crash"))) == 1
        with plug.client() as client:
            for batch_id, ids in expected.items():
                wait_until(client, batch_id, TERMINAL, timeout=120)
                check_invariants(client, batch_id, ids)
            check_usage(client, list(expected), real_time)
    finally:
        if plug.server is not None and plug.server.process.poll() is None:
            stop_server(plug.server)
    print(f"{plug.kills} kills; phases at kill time: {sorted(phases_hit)}")


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
