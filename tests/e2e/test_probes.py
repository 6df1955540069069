"""The probes of real processes: `batchd serve` not ready while its object store is down and
ready again when it is back, alive throughout; a `batchd worker` saying so on its metrics
port while it starts, runs and drains after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.backends import S3Server, running
from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.ports import free_port
from tests.support.server import API_KEY, start_server, stop_server

pytestmark = pytest.mark.backend_independent  # each test brings the backends it breaks


def until(answer: Callable[[], httpx.Response], check: Callable[[httpx.Response], bool],
          timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = answer()
            if check(got):
                return got
        except httpx.TransportError:
            got = None
        if time.monotonic() > deadline:
            raise AssertionError(f"no such answer in {timeout:.0f} s; last: "
                                 f"{got.status_code if got else None} {got.text if got else ''}")
        time.sleep(0.1)


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchd", "probe", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_serve_is_not_ready_while_its_object_store_is_down(tmp_path: Path) -> None:
    metrics_port = free_port()
    with running(S3Server) as s3:
        server = start_server(tmp_path / "data", tmp_path / "server.log", extra_env={
            **s3.environment(), "BATCHD_BLOB_URL": f"s3://{s3.bucket}/probes",
            "BATCHD_METRICS_PORT": str(metrics_port)})
        api = server.base_url.removesuffix("/v1")
        side = f"http://127.0.0.1:{metrics_port}"
        try:
            for base in (api, side):
                assert httpx.get(f"{base}/readyz").json() == {"status": "ok"}
            s3.stop()
            down = until(lambda: httpx.get(f"{api}/readyz", timeout=10),
                         lambda r: r.status_code == 503)
            error = down.json()["error"]
            assert error["code"] == "not_ready"
            assert "object store" in error["message"]
            assert down.headers["retry-after"] == "5"
            assert httpx.get(f"{side}/readyz").status_code == 503
            # Not a reason to restart it: liveness holds.
            assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
            assert httpx.get(f"{side}/healthz").json() == {"status": "ok"}
            s3.start()
            until(lambda: httpx.get(f"{api}/readyz", timeout=10), lambda r: r.status_code == 200)
            assert httpx.get(f"{side}/readyz").json() == {"status": "ok"}
        finally:
            stop_server(server)


def test_a_worker_serves_its_probes_while_it_starts_runs_and_drains(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(INSTANT_MODELS)
    metrics_port = free_port()
    # The API alone, and a worker on the same data dir (its SQLite database and blobs; a
    # worker keeps only its identity there, which `serve --no-worker` has none of).
    data = tmp_path / "data"
    server = start_server(data, tmp_path / "server.log", models=tmp_path / "models.yaml",
                          extra_env={"BATCHD_EMBEDDED_WORKER": "false"})
    env = {**os.environ, "BATCHD_DATA_DIR": str(data), "BATCHD_MODELS":
           str(tmp_path / "models.yaml"), "BATCHD_METRICS_PORT": str(metrics_port),
           "BATCHD_POLL_SECONDS": "0.1", "BATCHD_HEARTBEAT_SECONDS": "0.2",
           "BATCHD_SHUTDOWN_GRACE_SECONDS": "3"}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "batchd", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    side = f"http://127.0.0.1:{metrics_port}"
    try:
        ready = until(lambda: httpx.get(f"{side}/readyz"), lambda r: r.status_code == 200)
        assert ready.json() == {"status": "ok"}
        assert httpx.get(f"{side}/healthz").json() == {"status": "ok"}
        # `batchd probe`, the image's HEALTHCHECK, asks the metrics port.
        assert probe(env).returncode == 0
        assert probe(env, "--ready").stdout.strip() == '{"status":"ok"}'
        # A long request in flight: the worker drains it on SIGTERM, not ready meanwhile.
        with httpx.Client(base_url=server.base_url,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            upload = client.post("/files", data={"purpose": "batch"}, files={
                "file": ("in.jsonl", batch_line("hang", "HANG-ME") + "\n")})
            assert upload.status_code == 200, upload.text
            client.post("/batches", json={"input_file_id": upload.json()["id"],
                                             "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"}).raise_for_status()
        # The request itself in flight, not only its chunk claimed: a worker stopped before
        # its chunk's requests start hands the chunk back and exits at once, with nothing to
        # drain (and nobody left to answer /readyz).
        until(lambda: httpx.get(f"{side}/metrics"),
              lambda r: 'batchd_engine_busy_slots{model="instant-model"} 1.0' in r.text)
        worker.send_signal(signal.SIGTERM)
        draining = until(lambda: httpx.get(f"{side}/readyz"), lambda r: r.status_code == 503)
        assert draining.json()["error"]["message"] == "shutting down (draining after SIGTERM)"
        assert httpx.get(f"{side}/healthz").json() == {"status": "ok"}
        not_ready = probe(env, "--ready")
        assert not_ready.returncode == 1
        assert not_ready.stderr.strip() == (f"{side}/readyz: shutting down (draining after "
                                            "SIGTERM)")
        assert worker.wait(timeout=60) == 0
        gone = probe(env)
        assert gone.returncode == 1 and "Connection refused" in gone.stderr
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
        stop_server(server)
