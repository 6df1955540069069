"""POST /v1/files/{id}/estimate: a batch input file's requests, tokens, cost and time per
model before it runs, and the estimate against the actual run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchd.app import create_app
from batchd.estimates import throughput
from batchd.settings import Settings
from batchd.store.records import ChunkRun
from tests.support.harness import API_KEY, BASE_URL, Harness, Tenants
from tests.support.lines import INSTANT_MODELS, batch_line


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    """The instant models, `instant-model` priced, and a timed one: 0.1 s a request, four at
    a time (40 requests a second)."""
    path = tmp_path / "models.yaml"
    path.write_text(INSTANT_MODELS.replace(
        "  - id: instant-model\n",
        "  - id: instant-model\n"
        "    prices: {input: 2.0, cached_input: 1.0, output: 8.0, batch_discount: 0.5}\n")
        + "  - id: timed-model\n    engine: instant\n    delay_seconds: 0.1\n"
          "    concurrency: 4\n")
    return path


async def estimate(client: httpx.AsyncClient, file_id: str,
                   **params: Any) -> httpx.Response:
    return await client.post(f"/v1/files/{file_id}/estimate", json=params or None)


async def test_an_estimate_sums_each_model_and_lists_what_would_fail(harness: Harness) -> None:
    lines = [batch_line(f"a{n}", "one two three", max_tokens=10) for n in range(3)]
    lines += [batch_line(f"s{n}", "hello", model="slow-model") for n in range(2)]
    lines += ['{"custom_id": "broken"', batch_line("u", model="no-such-model")]
    file_id = await harness.upload(lines)
    answer = await estimate(harness.client, file_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "batch.estimate" and body["input_file_id"] == file_id
    assert body["endpoint"] == "/v1/chat/completions"  # from the lines' url
    assert body["requests"] == 5 and body["valid"] is False
    assert [(e["code"], e["line"]) for e in body["errors"]] == [
        ("invalid_json_line", 6), ("model_not_found", 7)]
    by_model = {m["model"]: m for m in body["models"]}
    priced, slow = by_model["instant-model"], by_model["slow-model"]
    assert priced["requests"] == 3 and slow["requests"] == 2
    assert priced["prompt_tokens_method"] == "estimate"  # the instant engine has no tokenizer
    assert priced["prompt_tokens"] > 0
    assert priced["output_tokens_max"] == 30 and slow["output_tokens_max"] == 2 * 1024
    # Per million tokens, at the batch discount: input 2.0 and output 8.0, halved.
    assert priced["cost"]["max"] == pytest.approx(
        (priced["prompt_tokens"] * 2.0 + 30 * 8.0) / 1e6 * 0.5)
    assert slow["cost"] == {"currency": "usd", "priced": False, "max": 0.0, "expected": None}
    assert body["cost"]["unpriced_models"] == ["slow-model"]
    # Nothing has run yet: no throughput to go by, so no time is promised.
    assert priced["throughput"] is None and body["expected_seconds"] is None


async def test_an_estimate_learns_from_what_ran(harness: Harness) -> None:
    # Run under an alias: the chunks name the model as the file did.
    await harness.run_batch([batch_line(f"w{n}", "one two three four", max_tokens=50,
                                        model="org/instant-alias") for n in range(6)])
    file_id = await harness.upload([batch_line(f"r{n}", "x") for n in range(4)])
    model = (await estimate(harness.client, file_id)).json()["models"][0]
    # The instant engine answers "echo: <the message>", one token a word.
    assert model["output_tokens_expected"] == 4 * 5
    assert model["cost"]["expected"] is not None


async def test_bad_estimates_are_clear_400s_and_404s(harness: Harness) -> None:
    notes = await harness.upload(b"hello", name="notes.txt", purpose="user_data")
    refused = await estimate(harness.client, notes)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file_id"
    batch_file = await harness.upload([batch_line("a")])
    wrong = await estimate(harness.client, batch_file, endpoint="/v1/nothing")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "endpoint"
    window = await estimate(harness.client, batch_file, completion_window="5h")
    assert window.status_code == 400
    assert window.json()["error"]["param"] == "completion_window"
    # The windows a batch may have: a short one can be judged against.
    short = (await estimate(harness.client, batch_file, completion_window="1h")).json()
    assert short["completion_window"] == "1h"
    assert (await estimate(harness.client, "file-missing")).status_code == 404
    # Another owner's file is not there at all.
    _, secret = await harness.services.keys.create(name="other", owner="other")
    async with harness.client_with(secret) as other:
        assert (await estimate(other, batch_file)).status_code == 404
    # The endpoint given wins over the lines' url: here every line is then wrong.
    embeddings = (await estimate(harness.client, batch_file, endpoint="/v1/embeddings")).json()
    assert embeddings["requests"] == 0 and embeddings["errors"][0]["code"] == "invalid_url"


async def test_the_caller_s_tier_limits_the_requests_as_batch_creation_does(
    harness: Harness, tenants: Tenants,
) -> None:
    trial = await tenants.client("trial-key", owner="tried", tier="trial")  # 1,000 a batch
    data = ("\n".join(batch_line(f"t{n}") for n in range(1_001)) + "\n").encode()
    file_id = (await trial.post("/v1/files", files={"file": ("big.jsonl", data)},
                                data={"purpose": "batch"})).json()["id"]
    body = (await estimate(trial, file_id)).json()
    assert body["valid"] is False and body["errors"][0]["code"] == "too_many_tasks"
    assert body["requests"] == 1_000
    assert (await estimate(harness.client, await harness.upload(data))).json()["valid"]


async def test_a_file_saved_with_a_bom_and_blank_lines_is_estimated_as_it_would_run(
    harness: Harness,
) -> None:
    data = ("\ufeff\n" + batch_line("a") + "\n\n" + batch_line("b") + "\n").encode()
    body = (await estimate(harness.client, await harness.upload(data))).json()
    assert body["valid"] is True and body["requests"] == 2
    assert body["endpoint"] == "/v1/chat/completions"


def test_throughput_counts_time_with_any_chunk_running_once() -> None:
    runs = [ChunkRun(0.0, 2.0, 10, 100), ChunkRun(1.0, 3.0, 10, 100),  # overlapping
            ChunkRun(10.0, 11.0, 5, 0)]  # after an idle gap, which is not counted
    measured = throughput(runs)
    assert measured is not None
    assert measured.busy_seconds == 4.0 and measured.requests_per_second == 25 / 4
    assert measured.output_tokens_per_request == 8.0
    assert throughput([]) is None


@contextlib.asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the real clock with its embedded worker, as `batchd serve` runs it."""
    settings.embedded_worker = True
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            yield client


async def run_timed(client: httpx.AsyncClient, file_id: str) -> float:
    """Seconds from creating a batch of `file_id` to its completion."""
    started = time.monotonic()
    created = await client.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    assert created.status_code == 200, created.text
    while (await client.get(f"/v1/batches/{created.json()['id']}")).json()["status"] not in (
            "completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def upload(client: httpx.AsyncClient, lines: list[str]) -> str:
    data = ("\n".join(lines) + "\n").encode()
    answer = await client.post("/v1/files", files={"file": ("in.jsonl", data)},
                               data={"purpose": "batch"})
    return str(answer.json()["id"])


async def test_the_estimated_time_is_within_a_quarter_of_the_actual(settings: Settings) -> None:
    settings.chunk_lines = 20
    async with live_app(settings) as client:
        # A first batch measures the model: 80 requests at 40 a second.
        await run_timed(client, await upload(
            client, [batch_line(f"w{n}", model="timed-model") for n in range(80)]))
        file_id = await upload(client, [batch_line(f"r{n}", model="timed-model")
                                        for n in range(160)])
        body = (await estimate(client, file_id)).json()
        (model,) = body["models"]
        assert model["throughput"]["requests_per_second"] == pytest.approx(40, rel=0.25)
        assert model["queued_ahead_requests"] == 0
        assert body["fits_completion_window"] is True
        actual = await run_timed(client, file_id)
        assert body["expected_seconds"] == pytest.approx(actual, rel=0.25), (body, actual)
