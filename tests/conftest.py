from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from batchd.app import create_app
from batchd.clock import ManualClock
from batchd.limits.preparation import work_owner
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.worker.context import WorkerContext
from batchd.worker.runner import Worker
from tests.services import BACKEND, PostgresServer, S3Server, shared_postgres, shared_s3

API_KEY = "sk-test-key"
ENDPOINT = "/v1/chat/completions"

INSTANT_MODELS = """
models:
  - id: instant-model
    engine: instant
    aliases: [org/instant-alias, org/second-alias]
    fail_marker: FAIL-ME
    hang_marker: HANG-ME
  - id: slow-model
    engine: instant
    delay_seconds: 0.05
  - id: embed-model
    engine: instant
    serves: [embeddings]
    embedding_dimensions: 8
  - id: both-model
    engine: instant
    serves: [chat, embeddings]
"""


T = TypeVar("T")


def as_owner(owner: str, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """`work()` as a task of `owner`'s, as an authenticated API request runs it."""
    context = contextvars.copy_context()
    context.run(work_owner.set, owner)
    return asyncio.get_running_loop().create_task(work(), context=context)  # type: ignore[arg-type]


async def submit_batch(client: httpx.AsyncClient, lines: list[str]) -> str:
    """Upload `lines` as a batch input file and create a chat batch of it; its id."""
    data = ("\n".join(lines) + "\n").encode()
    file_id = (await client.post("/v1/files", files={"file": ("in.jsonl", data)},
                                 data={"purpose": "batch"})).json()["id"]
    created = await client.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def batch_line(custom_id: str, content: str = "hello there", model: str = "instant-model",
               **body: Any) -> str:
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                       "body": payload})


@dataclass
class Harness:
    client: httpx.AsyncClient
    worker: Worker
    clock: ManualClock
    settings: Settings

    @property
    def blobs(self) -> BlobStore:
        return self.worker.ctx.blobs

    def stored_keys(self, prefix: str = "") -> list[str]:
        """The keys of every stored object (local disk or S3, whichever the suite uses)."""
        return list(self.blobs.keys(prefix))

    async def upload(self, lines: list[str] | bytes, *, name: str = "input.jsonl",
                     purpose: str = "batch") -> str:
        data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
        response = await self.client.post("/v1/files", files={"file": (name, data)},
                                          data={"purpose": purpose})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    async def create_batch(self, file_id: str, **extra: Any) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h",
                **extra}
        response = await self.client.post("/v1/batches", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def batch(self, batch_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/batches/{batch_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def lines_of(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        response = await self.client.get(f"/v1/files/{file_id}/content")
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.text.splitlines()]

    async def run_batch(self, lines: list[str], **extra: Any) -> dict[str, Any]:
        batch = await self.create_batch(await self.upload(lines), **extra)
        await self.worker.drain()
        return await self.batch(batch["id"])


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(INSTANT_MODELS)
    return path


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    return shared_postgres()


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    return shared_s3()


def shared_backend(pg: PostgresServer, s3: S3Server,
                   monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings for a fresh database and a fresh bucket prefix on the shared servers; the
    standard AWS variables point at the S3 server."""
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    return {"database_url": pg.create_database(),
            "blob_url": f"s3://{s3.bucket}/{uuid.uuid4().hex[:12]}"}


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    if BACKEND == "local":
        return {}
    return shared_backend(request.getfixturevalue("postgres_server"),
                          request.getfixturevalue("s3_server"), monkeypatch)


@pytest.fixture
def settings(tmp_path: Path, models_file: Path, backend: dict[str, str]) -> Settings:
    return Settings(data_dir=tmp_path / "data", models=models_file, api_key=API_KEY,
                    embedded_worker=False, chunk_lines=2, heartbeat_seconds=0.05,
                    poll_seconds=0.05, **backend)


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[Harness]:
    clock = ManualClock(start=1_750_000_000.0)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        svc = app.state.services
        worker = Worker(WorkerContext(worker_id="test-worker", store=svc.store, blobs=svc.blobs,
                                      registry=svc.registry, clock=clock, settings=settings,
                                      tiers=svc.tiers))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://batchd",
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            yield Harness(client=client, worker=worker, clock=clock, settings=settings)


class Tenants:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.clients: list[httpx.AsyncClient] = []

    async def client(self, name: str, *, tier: str = "core", role: str = "user",
                     owner: str | None = None) -> httpx.AsyncClient:
        keys = self.harness.client._transport.app.state.services.keys  # type: ignore[attr-defined]
        _, secret = await keys.create(name=name, owner=owner, tier=tier, role=role)
        client = httpx.AsyncClient(transport=self.harness.client._transport,
                                   base_url="http://batchd",
                                   headers={"Authorization": f"Bearer {secret}"})
        self.clients.append(client)
        return client


@pytest.fixture
async def tenants(harness: Harness) -> AsyncIterator[Tenants]:
    tenants = Tenants(harness)
    yield tenants
    for client in tenants.clients:
        await client.aclose()
