"""The container image as an operator runs it: built from the Dockerfile, `batchd migrate`
once, the API (`serve --no-worker`) and two workers as containers on PostgreSQL + S3, the
hosted guide's walkthrough through the official SDK, a worker container killed mid-batch,
and every result exactly once.

A tier of its own (`make test-container`, from .ci/run after `make test`): the first build
compiles llama.cpp (~8 minutes on 2 cores). PostgreSQL and SeaweedFS run on the host, as in
the scale-out tests; the containers share the host's network (the only one podman has on
this VM), so each gets its own ports."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.backends import PostgresServer, S3Server
from tests.support.container import (
    IMAGE,
    Container,
    build_image,
    containers,
    image_size,
    podman,
    run_once,
    unique,
)
from tests.support.ports import free_port

API_KEY = "sk-container-test"
GUIDE_MODELS = ["klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
                "klusterai/Meta-Llama-3.3-70B-Instruct-Turbo"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("build") / "build.log"
    seconds = build_image(log=log)
    print(f"image {IMAGE}: built in {seconds:.0f} s, {image_size() / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, str]]:
    pg, s3 = PostgresServer(), S3Server()
    pg.start()
    s3.start()
    try:
        yield {**s3.environment(), "BATCHD_DATABASE_URL": pg.create_database(),
               "BATCHD_BLOB_URL": f"s3://{s3.bucket}/container"}
    finally:
        s3.close()
        pg.close()


def wait_ready(url: str, container: Container, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.TransportError as exc:
            last = repr(exc)
        if not container.running():
            break
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready ({last}); {container.name} logs:\n"
                         f"{container.logs()[-4000:]}")


def test_the_image_runs_as_a_non_root_user_with_its_model_inside(image: str) -> None:
    uid = run_once("-u", entrypoint="id")
    assert uid.stdout.strip() == "10001", uid.stderr
    models = run_once("models")
    assert models.returncode == 0, models.stderr
    assert "SmolLM2-135M-Instruct  engine=llamacpp" in models.stdout
    assert "klusterai/Meta-Llama-3.1-8B-Instruct-Turbo" in models.stdout
    [inspected] = json.loads(podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["batchd"] and config["Cmd"] == ["serve"]
    assert "/var/lib/batchd" in config["Volumes"]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "batchd", "probe"]


def test_the_guide_runs_on_the_scaled_out_containers_and_a_killed_worker_loses_nothing(
    image: str, backends: dict[str, str], tmp_path: Path,
) -> None:
    done = run_once("migrate", env=backends)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema up to date" in done.stdout
    api_port, api_metrics = free_port(), free_port()
    shared = {**backends, "BATCHD_CHUNK_LINES": "3", "BATCHD_LEASE_SECONDS": "6",
              "BATCHD_HEARTBEAT_SECONDS": "1", "BATCHD_POLL_SECONDS": "0.2"}
    with containers() as running:
        api = Container(unique("api"), ["serve", "--no-worker"], {
            **shared, "BATCHD_PORT": str(api_port), "BATCHD_METRICS_PORT": str(api_metrics),
            "BATCHD_API_KEY": API_KEY}).start()
        running.append(api)
        workers = []
        for n in range(2):
            port = free_port()
            worker = Container(unique(f"worker{n}"), ["worker"],
                               {**shared, "BATCHD_METRICS_PORT": str(port)}).start()
            running.append(worker)
            workers.append((worker, port))
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", api)
        for worker, port in workers:
            wait_ready(f"http://127.0.0.1:{port}/readyz", worker)
        # The image's HEALTHCHECK (`batchd probe`) passes in each.
        for container in (api, *(w for w, _ in workers)):
            health = podman("healthcheck", "run", container.name, check=False)
            assert health.returncode == 0, health.stdout + health.stderr

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key=API_KEY,
                               max_retries=5)
        served = {model.id for model in client.models.list()}
        assert set(GUIDE_MODELS) <= served
        requests = [{"custom_id": f"request-{n}", "method": "POST",
                     "url": "/v1/chat/completions",
                     "body": {"model": GUIDE_MODELS[n % 2], "max_completion_tokens": 12,
                              "messages": [
                                  {"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": f"Name a colour. ({n})"}]}}
                    for n in range(24)]
        path = tmp_path / "my_batch_request.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests))
        with path.open("rb") as upload:
            batch_file = client.files.create(file=upload, purpose="batch")
        batch = client.batches.create(input_file_id=batch_file.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")

        # Kill the first worker (SIGKILL: no goodbye) while it holds work.
        victim, victim_port = workers[0]
        deadline = time.monotonic() + 120
        while "batchd_running_chunks 0.0" in httpx.get(
                f"http://127.0.0.1:{victim_port}/metrics").text:
            assert time.monotonic() < deadline, "the first worker never took a chunk"
            time.sleep(0.1)
        victim.kill()

        deadline = time.monotonic() + 600
        while (batch := client.batches.retrieve(batch.id)).status not in (
                "completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, f"batch stuck: {batch}"
            time.sleep(1)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed,
                batch.request_counts.failed) == (24, 24, 0)
        assert batch.output_file_id is not None and batch.error_file_id is None
        lines = [json.loads(line) for line in
                 client.files.content(batch.output_file_id).text.splitlines()]
        ids = [line["custom_id"] for line in lines]
        assert sorted(ids) == sorted(r["custom_id"] for r in requests)  # each exactly once
        assert all(line["response"]["status_code"] == 200 for line in lines)
        assert any(b.id == batch.id for b in client.batches.list(limit=10))
        # The killed worker's chunk was taken over by the other one, once its lease lapsed.
        survivor_metrics = httpx.get(f"http://127.0.0.1:{workers[1][1]}/metrics").text
        assert "batchd_chunks_reclaimed_total 0.0" not in survivor_metrics
        assert "batchd_chunks_reclaimed_total" in survivor_metrics

        # The guide's cancel, on the surviving worker.
        other = client.batches.create(input_file_id=batch_file.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        cancelled = client.batches.cancel(other.id)
        assert cancelled.status in ("cancelling", "cancelled")

        # A stopping container drains and exits cleanly.
        assert workers[1][0].stop() == 0
        assert api.stop() == 0
