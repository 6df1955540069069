"""Capacity is per model: a stalled model holds only its own slots, a small batch of another
owner runs beside a huge one, and an unreachable upstream's batches wait for it unharmed.
The worker runs its real loops here (not `drain`), as `batchd serve` does."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.harness import Harness, Tenants, submit_batch
from tests.support.lines import batch_line
from tests.support.ports import ReservedPort
from tests.support.waiting import eventually_async

REMOTE = ReservedPort()  # refused until the stub below starts on it
REMOTE_PORT = REMOTE.port
MODELS = f"""
models:
  - id: stalled
    engine: instant
    hang_marker: HANGME
  - id: healthy
    engine: instant
  - id: slow
    engine: instant
    delay_seconds: 0.05
  - id: remote
    engine: upstream
    base_urls: [http://127.0.0.1:{REMOTE_PORT}/v1]
    max_retries: 1
    backoff_seconds: 0.05
    timeout_seconds: 5
"""


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(MODELS)
    return path


@pytest.fixture
async def running(harness: Harness) -> AsyncIterator[Harness]:
    harness.worker.start()
    yield harness
    await harness.worker.stop(grace_seconds=0.5)


async def _status(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/batches/{batch_id}")).json())


async def _until_done(client: httpx.AsyncClient, batch_id: str,
                      timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = await _status(client, batch_id)
        if batch["status"] in {"completed", "failed", "cancelled", "expired"}:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"{batch_id} did not finish: {await _status(client, batch_id)}")


async def _until_running(client: httpx.AsyncClient, batch_id: str, timeout: float = 20) -> None:
    """Waits for validation to end: a slow host may take longer than any fixed sleep."""
    deadline = time.monotonic() + timeout
    while (await _status(client, batch_id))["status"] != "in_progress":
        assert time.monotonic() < deadline, await _status(client, batch_id)
        await asyncio.sleep(0.02)


async def test_a_stalled_model_does_not_hold_up_a_healthy_one(running: Harness) -> None:
    client = running.client
    hung = [await submit_batch(client, [batch_line(f"h{b}-{i}", "HANGME", model="stalled")
                                   for i in range(3)]) for b in range(3)]
    for batch_id in hung:
        await _until_running(client, batch_id)
    stalled = running.worker.capacity.gate("stalled")
    await eventually_async(lambda: stalled.in_flight == 9,
                           what="the hung batches' requests are all stuck in the engine")
    healthy = await submit_batch(client, [batch_line(f"ok-{i}", model="healthy") for i in range(5)])
    batch = await _until_done(client, healthy, timeout=20)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    for batch_id in hung:
        assert (await _status(client, batch_id))["status"] == "in_progress"


async def test_a_small_batch_runs_beside_a_big_one_of_another_owner(
    running: Harness, tenants: Tenants,
) -> None:
    # Two chunks of 1,500 requests: the worker's usual two chunks of the model are taken
    # for ~5 s, and used to be until the big batch ended.
    running.settings.chunk_lines = 1500
    big = await submit_batch(running.client, [batch_line(f"big-{i}", model="slow")
                                         for i in range(3000)])
    await _until_running(running.client, big)
    slow = running.worker.capacity.models["slow"]
    await eventually_async(lambda: slow.chunks == 2, what="both chunks of the big batch run")
    other = await tenants.client("small-owner")
    started = time.monotonic()
    small = await submit_batch(other, [batch_line(f"small-{i}", model="slow") for i in range(10)])
    batch = await _until_done(other, small, timeout=10)
    waited = time.monotonic() - started
    assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert (await _status(running.client, big))["status"] == "in_progress"
    print(f"the small batch finished {waited:.2f} s after it was created")
    assert waited < 2.5


class StubUpstream:
    """A stand-in OpenAI-compatible server (a test fake) that can be started late."""

    def __init__(self, port: int) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "back again"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():  # it could not bind, say: fail now, not at timeout
                raise RuntimeError("the stub upstream did not start (its thread's error is above)")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


async def test_an_unreachable_upstream_batch_waits_and_resumes_unharmed(
    running: Harness,
) -> None:
    client = running.client
    batch_id = await submit_batch(client, [batch_line(f"r{i}", model="remote") for i in range(6)])
    # Connections refused, retried, and the chunk handed back: the model's breaker is open.
    remote = running.worker.capacity.models["remote"].breaker
    await eventually_async(lambda: remote.backoff > 0, what="the upstream was found unreachable")
    batch = await _status(client, batch_id)
    assert batch["status"] == "in_progress"
    assert batch["request_counts"]["failed"] == 0
    # Meanwhile other models run as usual.
    healthy = await submit_batch(client, [batch_line("ok", model="healthy")])
    assert (await _until_done(client, healthy, timeout=20))["status"] == "completed"
    stub = StubUpstream(REMOTE_PORT)
    REMOTE.release()
    stub.start()
    try:
        batch = await _until_done(client, batch_id, timeout=20)
    finally:
        stub.stop()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
