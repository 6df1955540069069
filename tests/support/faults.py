"""Pulling the plug on the real server, and what must hold of every batch afterwards: each
custom_id exactly once across its output and error files, counts that match, whole files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import Server, start_server

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
        # A server that died on its own would make the kill a no-op and hide that death.
        assert self.server.process.poll() is None, "the server had already exited"
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


def wait_until(client: httpx.Client, batch_id: str, statuses: set[str],
               timeout: float = 60) -> dict[str, Any]:
    """The batch once its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = client.get(f"/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        time.sleep(0.005)
    raise AssertionError(f"{batch_id} never reached {statuses}: {batch}")


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
