"""Reading a batch's output while it runs, against the real server (a batchd extension)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.server import Server, start_server, stop_server

STEADY_MODEL = """
  - id: steady-model
    engine: instant
    delay_seconds: 0.05
    concurrency: 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("so-far")
    (root / "models.yaml").write_text(INSTANT_MODELS + STEADY_MODEL)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml",
                          extra_env={"BATCHD_CHUNK_LINES": "20",
                                     "BATCHD_CHECKPOINT_SECONDS": "0.3"})
    yield server
    stop_server(server)


def test_reading_the_output_while_it_runs_gives_each_line_once(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as client:
        lines = "".join(batch_line(f"r{i}", model="steady-model") + "\n" for i in range(200))
        upload = client.post("/files", files={"file": ("in.jsonl", lines)},
                             data={"purpose": "batch"}).json()
        batch = client.post("/batches", json={"input_file_id": upload["id"],
                                               "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"}).json()
        seen: list[str] = []
        after, more, pages_while_running = None, True, 0
        deadline = time.monotonic() + 120
        while more and time.monotonic() < deadline:
            response = client.get(f"/batches/{batch['id']}/output",
                                  params={"after": after} if after else {})
            assert response.status_code == 200, response.text
            got = [json.loads(line)["custom_id"] for line in response.text.splitlines()]
            status = client.get(f"/batches/{batch['id']}").json()["status"]
            if got and status == "in_progress":
                pages_while_running += 1
            seen += got
            after = response.headers["x-batchd-after"]
            more = response.headers["x-batchd-more"] == "true"
            time.sleep(0.2)
        final = client.get(f"/batches/{batch['id']}").json()
        assert final["status"] == "completed" and not more
        output = client.get(f"/files/{final['output_file_id']}/content").text.splitlines()
    assert pages_while_running >= 2  # results arrived before the end
    assert len(seen) == len(set(seen)) == 200
    assert set(seen) == {json.loads(line)["custom_id"] for line in output}
