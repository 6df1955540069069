"""The fixtures every tier shares: settings on the run's backends (local, or PostgreSQL + S3),
and the in-process harness. Their code lives in tests/support/."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchd.settings import Settings
from tests.support.backends import BACKEND, PostgresServer, S3Server, shared_postgres, shared_s3
from tests.support.harness import API_KEY, Harness, Tenants, running_harness
from tests.support.lines import INSTANT_MODELS

# The container tier (tests/container) builds an image: only `make test-container` runs it.
collect_ignore = [] if os.environ.get("BATCHD_CONTAINER_TESTS") else ["container"]


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
    async with running_harness(settings) as running:
        yield running


@pytest.fixture
async def tenants(harness: Harness) -> AsyncIterator[Tenants]:
    tenants = Tenants(harness)
    yield tenants
    await tenants.aclose()
