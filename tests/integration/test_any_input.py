"""Whatever bytes a user uploads, the batch ends cleanly: failed with reasons, or run."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchd.app import create_app
from batchd.clock import ManualClock
from batchd.settings import Settings
from batchd.worker.context import WorkerContext
from batchd.worker.runner import Worker
from tests.support.harness import API_KEY
from tests.support.lines import INSTANT_MODELS, batch_line

line = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda i, c: batch_line(f"id-{i}", c).encode(), st.integers(0, 5), st.text()),
    st.sampled_from([b"{}", b"[]", b"null", b'{"custom_id": "x"}', b"\xff\xfe", b"  "]),
)


async def run_file(data: bytes) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(INSTANT_MODELS)
        config = Settings(data_dir=root / "data", models=root / "models.yaml", api_key=API_KEY,
                          embedded_worker=False, chunk_lines=2)
        clock = ManualClock()
        app = create_app(config, clock=clock)
        async with app.router.lifespan_context(app):
            svc = app.state.services
            worker = Worker(WorkerContext(worker_id="w", store=svc.store, blobs=svc.blobs,
                                          registry=svc.registry, clock=clock, settings=config))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t",
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as c:
                up = await c.post("/v1/files", files={"file": ("f.jsonl", data)},
                                  data={"purpose": "batch"})
                assert up.status_code == 200
                batch = (await c.post("/v1/batches", json={
                    "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"})).json()
                await worker.drain()
                result: dict[str, object] = (await c.get(f"/v1/batches/{batch['id']}")).json()
                return result


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(line, max_size=8))
def test_any_file_ends_in_a_clean_terminal_state(lines: list[bytes]) -> None:
    data = b"\n".join(piece.replace(b"\n", b" ") for piece in lines)
    batch = asyncio.run(run_file(data))
    assert batch["status"] in ("completed", "failed")
    if batch["status"] == "failed":
        errors = batch["errors"]
        assert isinstance(errors, dict) and errors["data"]
        assert all(e["code"] and e["message"] for e in errors["data"])
