"""OpenAI's Usage API over batchd's usage: batch and real-time requests counted to the token
(the sums equal the `usage` of every output line and real-time answer), in OpenAI's page of
buckets, grouped and filtered; a user key sees only its owner's; bad parameters are 400s that
name the parameter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import Harness, Tenants, submit_batch
from tests.support.lines import INSTANT_MODELS, batch_line

START = 1_750_000_000 // 86400 * 86400  # the harness clock's day


async def usage(client: httpx.AsyncClient, kind: str = "completions",
                **params: Any) -> dict[str, Any]:
    answer = await client.get(f"/v1/organization/usage/{kind}",
                              params={"start_time": START, **params})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def events(stream: str) -> list[dict[str, Any]]:
    """The JSON objects of a stream of server-sent events."""
    return [json.loads(line[5:]) for line in stream.splitlines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def results(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for bucket in page["data"] for r in bucket["results"]]


async def test_batch_and_real_time_usage_add_up_to_the_token(
    harness: Harness, tenants: Tenants,
) -> None:
    alice = await tenants.client("alice-key", owner="alice")
    batch_id = await submit_batch(alice, [batch_line(f"r{n}", "word " * n) for n in range(1, 6)]
                                  + [batch_line("bad", "FAIL-ME")])
    await harness.worker.drain()
    batch = (await alice.get(f"/v1/batches/{batch_id}")).json()
    lines = await harness.lines_of(batch["output_file_id"])
    answers = [(await alice.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": "hi " * n}]})).json()
        for n in range(1, 3)]
    # Streams are counted too, with or without a usage chunk for the client.
    streamed = await alice.post("/v1/chat/completions", json={
        "model": "instant-model", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "stream this"}]})
    assert streamed.status_code == 200
    [stream_usage] = [chunk["usage"] for chunk in events(streamed.text) if chunk.get("usage")]
    quiet = await alice.post("/v1/completions", json={
        "model": "instant-model", "stream": True, "prompt": ["one two", "three"]})
    assert quiet.status_code == 200 and '"usage"' not in quiet.text
    responses = await alice.post("/v1/responses", json={
        "model": "instant-model", "stream": True, "input": "a streamed response"})
    [completed] = [e for e in events(responses.text) if e.get("type") == "response.completed"]
    response_usage = completed["response"]["usage"]
    embedded = (await alice.post("/v1/embeddings", json={
        "model": "embed-model", "input": ["one two", "three"]})).json()

    page = await usage(harness.client, group_by=["batch", "project_id", "api_key_id",
                                                 "model"], bucket_width="1d", limit=1)
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    [bucket] = page["data"]
    assert bucket["object"] == "bucket" and bucket["start_time"] == START
    by_batch = {r["batch"]: r for r in bucket["results"]}
    batch_usage = [line["response"]["body"]["usage"] for line in lines]
    assert by_batch[True]["num_model_requests"] == 5  # the failed line is not counted
    assert by_batch[True]["input_tokens"] == sum(u["prompt_tokens"] for u in batch_usage)
    assert by_batch[True]["output_tokens"] == sum(u["completion_tokens"] for u in batch_usage)
    assert by_batch[True]["input_tokens"] == batch["usage"]["input_tokens"]
    assert by_batch[True]["output_tokens"] == batch["usage"]["output_tokens"]
    real = by_batch[False]
    # Two whole answers and three streams (the completion's two prompts are one request).
    assert real["num_model_requests"] == 5
    # The instant engine: a prompt's tokens are its words, "echo: …" one token a word.
    quiet_usage = {"prompt_tokens": 3, "completion_tokens": 2 + 3}
    assert real["input_tokens"] == sum(a["usage"]["prompt_tokens"] for a in answers) + \
        stream_usage["prompt_tokens"] + quiet_usage["prompt_tokens"] + \
        response_usage["input_tokens"]
    assert real["output_tokens"] == sum(a["usage"]["completion_tokens"] for a in answers) + \
        stream_usage["completion_tokens"] + quiet_usage["completion_tokens"] + \
        response_usage["output_tokens"]
    for result in bucket["results"]:
        assert result["object"] == "organization.usage.completions.result"
        assert result["project_id"] == "alice" and result["model"] == "instant-model"
        assert result["api_key_id"].startswith("key_") and result["user_id"] is None
        assert result["input_audio_tokens"] == result["output_audio_tokens"] == 0
    [embeddings] = results(await usage(harness.client, "embeddings", group_by="model"))
    assert embeddings == {"object": "organization.usage.embeddings.result",
                          "input_tokens": embedded["usage"]["prompt_tokens"],
                          "num_model_requests": 1, "project_id": None, "user_id": None,
                          "api_key_id": None, "model": "embed-model"}


async def test_a_user_key_sees_only_its_owner_s_usage(harness: Harness, tenants: Tenants) -> None:
    alice = await tenants.client("alice-key", owner="alice")
    bob = await tenants.client("bob-key", owner="bob")
    for client in (alice, bob, bob):
        await client.post("/v1/chat/completions", json={
            "model": "instant-model", "messages": [{"role": "user", "content": "hi"}]})
    [mine] = results(await usage(alice, group_by="project_id"))
    assert (mine["project_id"], mine["num_model_requests"]) == ("alice", 1)
    assert results(await usage(alice, project_ids=["bob"])) == []
    everyone = results(await usage(harness.client, group_by="project_id"))
    assert {r["project_id"]: r["num_model_requests"] for r in everyone} == {"alice": 1, "bob": 2}
    [only_bob] = results(await usage(harness.client, **{"project_ids[]": "bob"}))
    assert only_bob["num_model_requests"] == 2


@pytest.mark.parametrize("into_the_minute", [0.0, 0.2, 30.0, 59.9])
async def test_usage_of_the_minute_begun_now_is_counted(
    harness: Harness, into_the_minute: float,
) -> None:
    # Usage is kept a minute to a row, from the minute's first second: a page that ends now
    # (no end_time) must hold this minute's row even in its first second, as a program that
    # reads usage right after its batch ended would find (it was left out then).
    harness.clock.advance(60 - harness.clock.now() % 60 + into_the_minute)
    await harness.client.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": "hi"}]})
    for width in ("1m", "1d"):
        start = int(harness.clock.now()) // 60 * 60 - 60
        page = await usage(harness.client, start_time=start, bucket_width=width)
        assert sum(r["num_model_requests"] for r in results(page)) == 1, (width, page)
        assert page["data"][-1]["end_time"] > harness.clock.now()


async def test_buckets_are_listed_empty_or_not_and_paged(harness: Harness) -> None:
    await harness.client.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": "hi"}]})
    now = int(harness.clock.now())
    start = now // 3600 * 3600 - 2 * 3600
    end = start + 3 * 3600 - 100  # the third bucket is cut short
    first = await usage(harness.client, start_time=start, bucket_width="1h", limit=2,
                        end_time=end)
    assert [b["start_time"] for b in first["data"]] == [start, start + 3600]
    assert all(b["results"] == [] for b in first["data"])
    assert first["has_more"] and first["next_page"] == f"page_{start + 7200}"
    second = await usage(harness.client, start_time=start, bucket_width="1h", limit=2,
                         end_time=end, page=first["next_page"])
    assert [b["start_time"] for b in second["data"]] == [start + 7200]
    assert second["data"][0]["end_time"] == end  # the last bucket ends at end_time
    assert results(second)[0]["num_model_requests"] == 1
    assert not second["has_more"]


@pytest.mark.parametrize(("params", "param"), [
    ({}, "start_time"),
    ({"start_time": "yesterday"}, "start_time"),
    ({"start_time": START, "end_time": START - 1}, "end_time"),
    ({"start_time": START, "bucket_width": "1w"}, "bucket_width"),
    ({"start_time": START, "bucket_width": "1m", "limit": 1441}, "limit"),
    ({"start_time": START, "bucket_width": "1d", "limit": 0}, "limit"),
    ({"start_time": START, "group_by": "colour"}, "group_by"),
    ({"start_time": START, "batch": "maybe"}, "batch"),
    ({"start_time": START, "page": "page_12"}, "page"),
])
async def test_bad_parameters_are_400s_naming_them(harness: Harness, params: dict[str, Any],
                                                   param: str) -> None:
    answer = await harness.client.get("/v1/organization/usage/completions", params=params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    embeddings = await harness.client.get("/v1/organization/usage/embeddings",
                                          params={"start_time": START, "group_by": "batch"})
    assert embeddings.status_code == 400
    assert embeddings.json()["error"]["param"] == "group_by"


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    """The instant models, `instant-model` priced (per million tokens) and the rest not."""
    path = tmp_path / "models.yaml"
    path.write_text(INSTANT_MODELS.replace(
        "  - id: instant-model\n",
        "  - id: instant-model\n"
        "    prices: {input: 2.0, cached_input: 1.0, output: 8.0, batch_discount: 0.5}\n"))
    return path


async def test_costs_price_usage_per_model_with_the_batch_discount(harness: Harness) -> None:
    await harness.run_batch([batch_line(f"r{n}", "word " * n) for n in range(1, 4)])
    answer = (await harness.client.post("/v1/chat/completions", json={
        "model": "org/instant-alias", "messages": [{"role": "user", "content": "hi there"}]}
    )).json()
    await harness.client.post("/v1/chat/completions", json={
        "model": "slow-model", "messages": [{"role": "user", "content": "unpriced"}]})
    rows = results(await usage(harness.client, group_by=["batch", "model"]))
    batch = next(r for r in rows if r["batch"] and r["model"] == "instant-model")
    real = next(r for r in rows if not r["batch"] and r["model"] == "instant-model")
    assert real["input_tokens"] == answer["usage"]["prompt_tokens"]
    expected = {
        "instant-model, batch input": batch["input_tokens"] * 2.0 * 0.5 / 1e6,
        "instant-model, batch output": batch["output_tokens"] * 8.0 * 0.5 / 1e6,
        "instant-model, input": real["input_tokens"] * 2.0 / 1e6,
        "instant-model, output": real["output_tokens"] * 8.0 / 1e6}
    page = (await harness.client.get("/v1/organization/costs", params={
        "start_time": START, "group_by": ["line_item", "project_id"]})).json()
    [bucket] = page["data"]
    assert page["unpriced_models"] == ["slow-model"]
    got = {r["line_item"]: r["amount"]["value"] for r in bucket["results"]}
    assert got == pytest.approx(expected)
    assert all(r["object"] == "organization.costs.result" and r["project_id"] == "default"
               and r["amount"]["currency"] == "usd" for r in bucket["results"])
    [total] = (await harness.client.get("/v1/organization/costs", params={
        "start_time": START})).json()["data"][0]["results"]
    assert total["amount"]["value"] == pytest.approx(sum(expected.values()))
    assert total["line_item"] is None and total["project_id"] is None
    bad = await harness.client.get("/v1/organization/costs", params={
        "start_time": START, "bucket_width": "1h"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket_width"
