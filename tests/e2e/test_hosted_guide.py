"""The hosted getting-started guide's workflow, run unchanged but for base_url and the key,
against the real server and the real SmolLM2 model, with the official openai SDK and curl."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from tests.support.server import Server

GUIDE_MODELS = ["klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
                "klusterai/Meta-Llama-3.3-70B-Instruct-Turbo"]


@pytest.fixture
def client(real_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=real_server.base_url, api_key=real_server.api_key) as client:
        yield client


def write_requests(path: Path, n: int, max_tokens: int = 8) -> None:
    with path.open("w") as file:
        for i in range(n):
            file.write(json.dumps({
                "custom_id": f"request-{i + 1}", "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": GUIDE_MODELS[i % 2],
                    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": f"What is {i} plus {i}?"}],
                    "max_completion_tokens": max_tokens, "temperature": 0,
                },
            }) + "\n")


def wait_for(client: OpenAI, batch_id: str, statuses: set[str], timeout: float = 120) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} stuck in {batch.status}")


def test_guide_workflow_with_the_sdk(client: OpenAI, tmp_path: Path) -> None:
    file_name = tmp_path / "mybatchtest.jsonl"
    write_requests(file_name, 3)
    with open(file_name, "rb") as file:
        batch_input_file = client.files.create(file=file, purpose="batch")
    assert batch_input_file.filename == "mybatchtest.jsonl"
    batch_request = client.batches.create(input_file_id=batch_input_file.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")
    assert batch_request.status == "validating"
    batch_status = wait_for(client, batch_request.id, {"completed", "failed", "cancelled"})
    assert batch_status.status == "completed", batch_status
    assert batch_status.request_counts.completed == 3
    assert batch_status.request_counts.total == 3
    results = client.files.content(batch_status.output_file_id).content
    lines = [json.loads(line) for line in results.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["request-1", "request-2",
                                                           "request-3"]
    for line in lines:
        body = line["response"]["body"]
        assert body["model"] in GUIDE_MODELS
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] <= 8
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert batch_status.usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines)

    page = client.batches.list(limit=2)
    assert page.data[0].id == batch_request.id
    all_ids = [b.id for b in client.batches.list(limit=1)]  # auto-paginates
    assert batch_request.id in all_ids


def test_cancel_with_the_sdk_keeps_partial_results(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    write_requests(path, 40, max_tokens=16)
    with path.open("rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(client, batch.id, {"in_progress"})
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    started = time.monotonic()
    done = wait_for(client, batch.id, {"cancelled"}, timeout=30)
    assert time.monotonic() - started < 15  # seconds, not minutes
    counts = done.request_counts
    assert counts.total == 40 and counts.completed + counts.failed == 40
    errors = client.files.content(done.error_file_id).content.splitlines()
    assert len(errors) == counts.failed
    assert {json.loads(e)["error"]["code"] for e in errors} <= {"batch_cancelled"}
    # A finished batch cannot be cancelled: a 409 the SDK does not retry.
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(_completed_batch_id(client))


def _completed_batch_id(client: OpenAI) -> str:
    first_completed = next(b for b in client.batches.list() if b.status == "completed")
    return first_completed.id


def test_models_and_realtime_chat(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "SmolLM2-135M-Instruct" in ids and GUIDE_MODELS[0] in ids
    assert client.models.retrieve(GUIDE_MODELS[0]).id == GUIDE_MODELS[0]

    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8

    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(
        model=GUIDE_MODELS[1], max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}],
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) and finish in ("stop", "length")
    assert usage is not None and usage.prompt_tokens > 0

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_guide_curl_upload_and_content(real_server: Server, tmp_path: Path) -> None:
    path = tmp_path / "mybatchtest.jsonl"
    write_requests(path, 2, max_tokens=4)
    auth = f"Authorization: Bearer {real_server.api_key}"

    def curl(*args: str) -> bytes:
        return subprocess.run(["curl", "-s", "--fail-with-body", *args], check=True,
                              capture_output=True).stdout

    uploaded = json.loads(curl(f"{real_server.base_url}/files", "-H", auth,
                               "-H", "Content-Type: multipart/form-data",
                               "-F", f"file=@{path}", "-F", "purpose=batch"))
    assert uploaded["bytes"] == path.stat().st_size
    batch = json.loads(curl(f"{real_server.base_url}/batches", "-H", auth,
                            "-H", "Content-Type: application/json", "-d", json.dumps({
                                "input_file_id": uploaded["id"],
                                "endpoint": "/v1/chat/completions",
                                "completion_window": "24h"})))
    with OpenAI(base_url=real_server.base_url, api_key=real_server.api_key) as client:
        done = wait_for(client, batch["id"], {"completed"})
        output = curl(f"{real_server.base_url}/files/{done.output_file_id}/content", "-H", auth)
        assert len(output.splitlines()) == 2
        assert curl(f"{real_server.base_url}/files/{uploaded['id']}/content", "-H", auth) == (
            path.read_bytes())


def test_logs_hold_no_keys_and_no_prompts(real_server: Server) -> None:
    log = real_server.log.read_text()
    assert "batchd" in log or "INFO" in log  # the log is there and written
    assert real_server.api_key not in log
    assert "plus" not in log  # prompt text of this module's requests ("What is 1 plus 1?")


def test_shared_prompt_prefix_is_reused_and_reported(client: OpenAI, tmp_path: Path) -> None:
    system = "You answer questions about the city library. " * 10
    path = tmp_path / "shared.jsonl"
    path.write_text("".join(json.dumps({
        "custom_id": f"s{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "SmolLM2-135M-Instruct", "max_tokens": 2, "temperature": 0,
                 "messages": [{"role": "system", "content": system},
                              {"role": "user", "content": f"Question {i}?"}]}}) + "\n"
        for i in range(6)))
    with path.open("rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = wait_for(client, batch.id, {"completed"})
    assert done.output_file_id is not None and done.usage is not None
    lines = [json.loads(line) for line in
             client.files.content(done.output_file_id).content.splitlines()]
    cached = [line["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
              for line in lines]
    assert sum(1 for c in cached if c > 50) >= 4  # all but the first one or two reuse it
    assert done.usage.input_tokens_details.cached_tokens == sum(cached)
