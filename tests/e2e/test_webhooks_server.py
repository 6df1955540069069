"""Webhook delivery against the real server survives kill -9: the event was recorded with the
batch's status change, so a restarted server delivers it (verified with the openai SDK)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.ports import free_port
from tests.support.server import start_server, stop_server
from tests.support.webhook_receiver import receiving

ENV = {"BATCHD_WEBHOOK_FIRST_RETRY_SECONDS": "0.5",
       "BATCHD_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}  # the receiver is local


def test_a_delivery_pending_at_kill_9_is_made_after_the_restart(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(INSTANT_MODELS)
    port = free_port()  # the receiver is down at first: nothing listens there
    server = start_server(tmp_path / "data", tmp_path / "server.log",
                          models=tmp_path / "models.yaml", extra_env=ENV)
    try:
        with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=30,
                          headers={"Authorization": f"Bearer {server.api_key}"}) as client:
            endpoint = client.post("/admin/webhooks", json={
                "url": f"http://127.0.0.1:{port}/hooks"}).json()
            upload = client.post("/v1/files", files={"file": ("a.jsonl", batch_line("a"))},
                                 data={"purpose": "batch"}).json()
            batch = client.post("/v1/batches", json={
                "input_file_id": upload["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}).json()
            deadline = time.monotonic() + 30
            attempts: list[dict[str, object]] = []
            while not attempts and time.monotonic() < deadline:
                time.sleep(0.1)
                deliveries = client.get(f"/admin/webhooks/{endpoint['id']}/deliveries").json()
                attempts = deliveries["data"][0]["attempts"] if deliveries["data"] else []
            assert attempts and attempts[0]["status"] is None  # refused: nothing listens
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        with receiving(port) as receiver:
            server = start_server(tmp_path / "data", tmp_path / "server.log",
                                  models=tmp_path / "models.yaml", extra_env=ENV)
            got = receiver.wait_for(1)
            assert len(got) == 1, (tmp_path / "server.log").read_text()[-2000:]
            event = OpenAI(api_key="unused").webhooks.unwrap(got[0].body, got[0].headers,
                                                             secret=endpoint["secret"])
            assert event.type == "batch.completed" and event.data.id == batch["id"]
            time.sleep(1.5)
            assert len(receiver.received) == 1  # delivered once
    finally:
        stop_server(server)
