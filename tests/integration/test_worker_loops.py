"""A worker whose loop dies stops, says so in its log and on /healthz, and tells the process,
which can then exit to be restarted, instead of answering HTTP while doing no work."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from batchd.app import create_app
from batchd.settings import Settings
from batchd.worker.runner import Worker, WorkerFailed
from tests.support.harness import API_KEY


async def test_a_dying_loop_stops_the_worker_and_fails_healthz(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    settings.embedded_worker = True
    dies = asyncio.Event()

    async def claim_chunks(self: Worker) -> None:
        await dies.wait()
        raise RuntimeError("a bug in the chunk loop")

    monkeypatch.setattr(Worker, "_claim_chunks", claim_chunks)
    started: list[Worker] = []
    start = Worker.start

    def start_and_keep(self: Worker, **kwargs: Any) -> None:
        started.append(self)
        start(self, **kwargs)

    monkeypatch.setattr(Worker, "start", start_and_keep)
    failures: list[WorkerFailed] = []
    app = create_app(settings, on_worker_failure=failures.append)
    with caplog.at_level(logging.ERROR):
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://batchd",
                headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            dies.set()
            [worker] = started
            # Every other loop ends too: the worker stopped, it does not limp on.
            await asyncio.wait_for(asyncio.gather(*worker._tasks, return_exceptions=True), 5)
            assert worker.failed is not None
            answer = await client.get("/healthz")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "worker_failed"
    assert error["message"] == ("the worker stopped: its chunks loop failed: "
                                "RuntimeError('a bug in the chunk loop')")
    assert [str(f) for f in failures] == [error["message"]]  # told once
    assert "worker loop chunks failed; stopping the worker" in caplog.text
    assert "a bug in the chunk loop" in caplog.text  # with its traceback
