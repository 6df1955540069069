"""The app in process, driven through httpx, with a worker the test steps by hand and a clock
it moves: the integration tests' harness."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from batchd.api.state import Services
from batchd.app import create_app
from batchd.clock import ManualClock
from batchd.limits.preparation import work_owner
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.worker.context import WorkerContext
from batchd.worker.runner import Worker
from tests.support.lines import ENDPOINT

API_KEY = "sk-test-key"
BASE_URL = "http://batchd"

T = TypeVar("T")


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient  # authenticated with the admin key API_KEY
    worker: Worker
    clock: ManualClock
    settings: Settings

    @property
    def services(self) -> Services:
        """The app's services, for what no API shows (the tests' side door)."""
        services: Services = self.app.state.services
        return services

    @property
    def blobs(self) -> BlobStore:
        return self.worker.ctx.blobs

    def client_with(self, secret: str | None) -> httpx.AsyncClient:
        """Another client of the same app, with the key `secret` (None: no key at all)."""
        headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL,
                                 headers=headers)

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


@contextlib.asynccontextmanager
async def running_harness(settings: Settings) -> AsyncIterator[Harness]:
    """The app started (its lifespan run) with a worker that is not: the test drives it."""
    clock = ManualClock(start=1_750_000_000.0)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        svc = app.state.services
        worker = Worker(WorkerContext(worker_id="test-worker", store=svc.store, blobs=svc.blobs,
                                      registry=svc.registry, clock=clock, settings=settings,
                                      tiers=svc.tiers))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            yield Harness(app=app, client=client, worker=worker, clock=clock, settings=settings)


class Tenants:
    """Clients of the harness's app, each with a key of its own (closed by the fixture)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.clients: list[httpx.AsyncClient] = []

    async def client(self, name: str, *, tier: str = "core", role: str = "user",
                     owner: str | None = None) -> httpx.AsyncClient:
        keys = self.harness.services.keys
        _, secret = await keys.create(name=name, owner=owner, tier=tier, role=role)
        client = self.harness.client_with(secret)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


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
