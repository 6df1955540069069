"""A batch cancelled while its requests are at an upstream server: the worker stops waiting
for them and closes their connections, so the server can stop generating what nobody will
read (vLLM aborts a request whose client left), and the batch ends cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from batchd.settings import Settings
from tests.support.harness import Harness
from tests.support.lines import batch_line


class HoldingServer:
    """Reads each request's head and never answers; counts the requests it holds and the
    connections their client closed."""

    def __init__(self) -> None:
        self.held = self.closed = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            self.held += 1
            while await reader.read(1024):
                pass
            self.closed += 1
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HoldingServer]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            await server.wait_closed()


@pytest.fixture
async def holding() -> AsyncIterator[HoldingServer]:
    async with HoldingServer().running() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, holding: HoldingServer) -> Settings:
    models = tmp_path / "held-models.yaml"
    models.write_text(f"models:\n  - id: gpu\n    engine: upstream\n"
                      f"    base_urls: [{holding.url}]\n")
    return settings.model_copy(update={"models": models, "chunk_lines": 8})


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_cancelling_a_batch_closes_its_requests_at_the_upstream_server(
        harness: Harness, holding: HoldingServer) -> None:
    lines = [batch_line(f"r{i}", model="gpu") for i in range(8)]
    created = await harness.create_batch(await harness.upload(lines))
    draining = asyncio.create_task(harness.worker.drain())
    try:
        await _until(lambda: holding.held == 8, 15)  # the whole chunk is at the server
        cancelled = await harness.client.post(f"/v1/batches/{created['id']}/cancel")
        assert cancelled.json()["status"] == "cancelling"
        await asyncio.wait_for(draining, 30)
    finally:
        draining.cancel()
    batch = await harness.batch(created["id"])
    assert batch["status"] == "cancelled"
    assert batch["request_counts"] == {"total": 8, "completed": 0, "failed": 8}
    await _until(lambda: holding.closed == 8, 5)  # every held request's connection closed
