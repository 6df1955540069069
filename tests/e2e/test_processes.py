"""The CLI as a user runs it: keys, and the API and workers as separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.backends import backend_env
from tests.support.lines import INSTANT_MODELS
from tests.support.ports import free_port
from tests.support.server import run_instant_batch, start_server, stop_server
from tests.support.waiting import eventually


def batchd(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env.update(backend_env(data_dir))
    return subprocess.run([sys.executable, "-m", "batchd", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = batchd("keys", "create", "--name", "alice", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("bd-") and len(secret) > 40
    listed = batchd("keys", "list", data_dir=tmp_path)
    assert "alice" in listed.stdout and secret not in listed.stdout
    assert batchd("keys", "revoke", "alice", data_dir=tmp_path).returncode == 0
    assert "revoked" in batchd("keys", "list", data_dir=tmp_path).stdout
    assert batchd("keys", "revoke", "nobody", data_dir=tmp_path).returncode == 1


def test_stored_keys_authenticate_and_revocation_is_immediate(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(INSTANT_MODELS)
    secret = batchd("keys", "create", "--name", "bob",
                    data_dir=tmp_path / "data").stdout.strip().splitlines()[-1]
    server = start_server(tmp_path / "data", tmp_path / "server.log", models=models)
    try:
        url = f"{server.base_url}/models"
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(url, headers=headers).status_code == 200
        batchd("keys", "revoke", "bob", data_dir=tmp_path / "data")
        assert httpx.get(url, headers=headers).status_code == 401
    finally:
        stop_server(server)


def test_api_and_standalone_worker_processes_share_the_store(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(INSTANT_MODELS)
    data = tmp_path / "data"
    server = start_server(data, tmp_path / "server.log", models=models,
                          extra_env={"BATCHD_EMBEDDED_WORKER": "false"})
    env = {**os.environ, "BATCHD_POLL_SECONDS": "0.1", "BATCHD_CHUNK_LINES": "3",
           **backend_env(data)}
    workers = [subprocess.Popen([sys.executable, "-m", "batchd", "worker", "--data-dir",
                                 str(data), "--models", str(models)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        ids = run_instant_batch(server.base_url, server.api_key, tmp_path, 20)
        assert sorted(ids) == sorted(f"r{i}" for i in range(20))
    finally:
        stop_server(server)
        for worker in workers:
            worker.terminate()
        codes = [worker.wait(timeout=30) for worker in workers]
    assert codes == [0, 0]  # SIGTERM is a clean stop for a worker too


# The real command, with one worker loop broken from outside (no hook in batchd for it).
BROKEN_LOOP = """
import sys
from batchd.cli import main
from batchd.worker.runner import Worker

async def dies(self):
    raise RuntimeError("a bug in a worker loop")

Worker._deliver_webhooks = dies
sys.argv[0] = "batchd"
main()
"""


@pytest.mark.backend_independent  # a loop's death ends the process whatever the store
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_process_whose_worker_died_exits_non_zero_saying_why(
    tmp_path: Path, command: str,
) -> None:
    args = [command, "--port", str(free_port())] if command == "serve" else [command]
    models = tmp_path / "models.yaml"
    models.write_text(INSTANT_MODELS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env.update(backend_env(tmp_path / "data"))
    ended = subprocess.run(
        [sys.executable, "-c", BROKEN_LOOP, *args, "--data-dir", str(tmp_path / "data"),
         "--models", str(models)], capture_output=True, text=True, env=env, timeout=60)
    assert ended.returncode == 1, ended.stderr
    assert (f"batchd {command}: the worker stopped: its webhooks loop failed: "
            "RuntimeError('a bug in a worker loop'); exiting so that it is restarted"
            ) in ended.stderr


def test_the_sdk_retries_through_a_rate_limit(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(INSTANT_MODELS)
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text("default_tier: burst\ntiers:\n  burst:\n    requests_per_minute: 60\n")
    created = batchd("keys", "create", "--name", "eve", "--tiers", str(tiers),
                     data_dir=tmp_path / "data")
    assert "tier=burst" in created.stdout, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    server = start_server(tmp_path / "data", tmp_path / "server.log", models=models,
                          extra_env={"BATCHD_TIERS": str(tiers)})
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=server.base_url, headers=headers) as raw:
            for _ in range(70):  # empty the bucket of 60
                if raw.get("/models").status_code == 429:
                    break
            else:
                raise AssertionError("never rate limited")

        def refusals() -> int:  # access log lines arrive a moment after their answers
            return server.log.read_text().count('/v1/models HTTP/1.1" 429')

        refused_before = eventually(refusals, what="the refusal above reached the log")
        with OpenAI(base_url=server.base_url, api_key=secret, max_retries=3) as client:
            assert [m.id for m in client.models.list()]  # 429, waits Retry-After, then success
            # It really was refused first.
            eventually(lambda: refusals() > refused_before, what="the SDK's refusal was logged")
            with pytest.raises(openai.RateLimitError):
                for _ in range(100):
                    client.with_options(max_retries=0).models.list()
    finally:
        stop_server(server)
