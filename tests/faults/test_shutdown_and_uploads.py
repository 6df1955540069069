"""SIGTERM mid-batch, and an upload cut off mid-stream, against the real server."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from tests.support.backends import stored_objects
from tests.support.faults import FAULT_ENV, TERMINAL, Plug, check_invariants, submit, wait_until
from tests.support.lines import batch_line
from tests.support.metrics import samples, total
from tests.support.waiting import eventually

SLOW_MODELS = """
models:
  - id: instant-model
    engine: instant
    delay_seconds: 0.05
"""


def test_sigterm_finishes_in_flight_work_and_exits_cleanly(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(SLOW_MODELS)
    plug = Plug(tmp_path, models, {**FAULT_ENV, "BATCHD_WORKER_CONCURRENCY": "4",
                                   "BATCHD_CHECKPOINT_SECONDS": "60",
                                   "BATCHD_SHUTDOWN_GRACE_SECONDS": "5"})
    server = plug.start()
    with plug.client() as client:
        batch_id = submit(client, [batch_line(f"r{i}") for i in range(300)])
        wait_until(client, batch_id, {"in_progress"})
        before = eventually(
            lambda: client.get(f"/batches/{batch_id}").json()["request_counts"]["completed"],
            what="some requests completed before the signal")
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 10  # the grace period bounds the wait
    plug.start()
    with plug.client() as client:
        # What ran before the signal was checkpointed at shutdown, not lost with the chunk.
        after_restart = client.get(f"/batches/{batch_id}").json()["request_counts"]["completed"]
        assert after_restart >= before > 0
        wait_until(client, batch_id, TERMINAL)
        counts = check_invariants(client, batch_id, {f"r{i}" for i in range(300)})
        assert counts["completed"] == 300
    plug.server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert plug.server.process.wait(timeout=20) == 0  # type: ignore[union-attr]


def test_an_upload_cut_off_mid_stream_leaves_no_file(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(SLOW_MODELS)
    plug = Plug(tmp_path, models, FAULT_ENV)
    server = plug.start()
    try:
        port = int(server.base_url.split(":")[2].split("/")[0])
        root = server.base_url.removesuffix("/v1")
        boundary = "batchdboundary"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="cut.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n')
        body_start = head.encode() + b'{"custom_id": "a"}\n' * 20_000
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {server.api_key}\r\n".encode()
                + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
                + f"Content-Length: {len(body_start) * 3}\r\n\r\n".encode()
                + body_start)
        with plug.client() as client:
            # The server has seen the upload end (its request is counted once answered or
            # dropped), so "no file" below is what it left, not what it had yet to store.
            eventually(lambda: total(samples(client.get(f"{root}/metrics").text),
                                     "batchd_http_requests_total", method="POST",
                                     route="/v1/files") == 1,
                       what="the cut-off upload was dealt with")
            assert client.get("/files").json()["data"] == []
            assert client.get("/models").status_code == 200  # still serving
        assert stored_objects(tmp_path / "data") == []
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
