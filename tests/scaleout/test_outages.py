"""While PostgreSQL or S3 is down, the API answers 503 with Retry-After in OpenAI's envelope
(never a 500), and everything works again once it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from batchd.app import create_app
from batchd.settings import Settings
from tests.support.backends import PostgresServer, S3Server, running
from tests.support.harness import API_KEY
from tests.support.lines import INSTANT_MODELS, batch_line


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with running(PostgresServer) as server:  # its own: this test stops it
        yield server


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    with running(S3Server) as server:
        yield server


@pytest.fixture
async def client(tmp_path: Path, own_postgres: PostgresServer, own_s3: S3Server,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    for name, value in own_s3.environment().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "models.yaml").write_text(INSTANT_MODELS)
    settings = Settings(data_dir=tmp_path / "data", models=tmp_path / "models.yaml",
                        api_key=API_KEY, embedded_worker=False,
                        database_url=own_postgres.create_database(),
                        blob_url=f"s3://{own_s3.bucket}/outage")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://batchd", timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            yield client


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and "unavailable" in error["message"]


async def test_a_database_outage_is_a_503_then_service_resumes(
    client: httpx.AsyncClient, own_postgres: PostgresServer,
) -> None:
    upload = await client.post("/v1/files", files={"file": ("a.jsonl", batch_line("a") + "\n")},
                               data={"purpose": "batch"})
    assert upload.status_code == 200
    own_postgres.stop("immediate")
    try:
        assert_unavailable(await client.get("/v1/batches"))
        assert_unavailable(await client.post("/v1/batches", json={
            "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}))
    finally:
        own_postgres.start()
    assert (await client.get("/v1/batches")).status_code == 200
    assert (await client.get(f"/v1/files/{upload.json()['id']}")).status_code == 200


async def test_an_object_store_outage_is_a_503_then_service_resumes(
    client: httpx.AsyncClient, own_s3: S3Server,
) -> None:
    upload = await client.post("/v1/files", files={"file": ("a.jsonl", batch_line("a") + "\n")},
                               data={"purpose": "batch"})
    file_id = upload.json()["id"]
    own_s3.stop()
    try:
        assert_unavailable(await client.get(f"/v1/files/{file_id}/content"))
        assert_unavailable(await client.post(
            "/v1/files", files={"file": ("b.jsonl", batch_line("b") + "\n")},
            data={"purpose": "batch"}))
        assert (await client.get("/v1/files")).status_code == 200  # metadata still answers
    finally:
        own_s3.start()
    content = await client.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200 and content.text == batch_line("a") + "\n"
    listed = (await client.get("/v1/files")).json()["data"]
    assert [f["id"] for f in listed] == [file_id]  # the refused upload left no record
