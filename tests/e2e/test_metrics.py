"""/metrics against the real server, parsed with prometheus-client's own parser."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.metrics import samples, value
from tests.support.ports import free_port
from tests.support.server import Server, start_server, stop_server


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("metrics")
    (root / "models.yaml").write_text(INSTANT_MODELS)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml",
                          extra_env={"BATCHD_METRICS_PORT": str(metrics_port)})
    yield server
    stop_server(server)


def run_batch(client: httpx.Client, lines: list[str]) -> str:
    upload = client.post("/v1/files", files={"file": ("in.jsonl", "\n".join(lines) + "\n")},
                         data={"purpose": "batch"})
    batch = client.post("/v1/batches", json={"input_file_id": upload.json()["id"],
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).json()
    deadline = time.monotonic() + 60
    while batch["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "completed"
    return str(batch["id"])


def test_metrics_count_requests_batches_and_tokens(server: Server, metrics_port: int,
                                                   tmp_path: Path) -> None:
    root = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {server.api_key}"},
                      timeout=30) as admin:
        run_batch(admin, [batch_line(f"r{i}") for i in range(4)]
                  + [batch_line("bad", "FAIL-ME")])
        admin.get("/v1/batches/batch_missing")
        response = admin.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        user = admin.post("/admin/keys", json={"name": "viewer"}).json()["secret"]
        refused = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {user}"})
        assert refused.status_code == 403
    assert value(found, "batchd_http_requests_total", method="POST", route="/v1/batches",
                 status="200") == 1
    assert value(found, "batchd_http_requests_total", method="GET",
                 route="/v1/batches/{batch_id}", status="404") == 1
    assert value(found, "batchd_http_request_duration_seconds_count", method="POST",
                 route="/v1/files") == 1
    assert value(found, "batchd_batch_requests_total", model="instant-model",
                 outcome="ok") == 4
    assert value(found, "batchd_batch_requests_total", model="instant-model",
                 outcome="error") == 1
    assert value(found, "batchd_tokens_total", model="instant-model", kind="completion") > 0
    assert value(found, "batchd_tokens_total", model="instant-model", kind="prompt") > 0
    assert value(found, "batchd_batches", status="completed") == 1
    assert value(found, "batchd_worker_starts_total") == 1
    assert value(found, "batchd_engine_slots", model="instant-model") > 0
    assert value(found, "batchd_engine_tokens_per_second", model="instant-model") > 0
    assert ("batchd_running_chunks", ()) in found
    # The same, without a key, on the metrics port.
    scraped = samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
    assert value(scraped, "batchd_batch_requests_total", model="instant-model",
                 outcome="ok") == 4
    assert ("process_resident_memory_bytes", ()) in scraped
