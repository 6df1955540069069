"""The outside probe's findings (limits raced, quotas dodged, 500s from odd Unicode, memory held
by uploads, one tenant holding the engine), each as the class of bug, not only the example."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from batchd.batches.validation import InputValidator
from batchd.openai.chat import ChatCompletionRequest
from tests.support.harness import Harness, Tenants
from tests.support.lines import ENDPOINT, batch_line


def raw_json(body: dict[str, Any]) -> bytes:
    """JSON as any client may send it: lone surrogates as \\uXXXX escapes (httpx's own
    encoder cannot even encode them)."""
    return json.dumps(body, ensure_ascii=True).encode()


async def post_raw(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(path, content=raw_json(body),
                             headers={"content-type": "application/json"})


# --- D1: the unfinished-batch limit holds under parallel creates ------------------------------


async def test_parallel_creates_of_one_key_cannot_pass_the_unfinished_batch_limit(
    harness: Harness, tenants: Tenants,
) -> None:
    trial = await tenants.client("racer", tier="trial")  # 20 unfinished batches at most
    up = await trial.post("/v1/files", files={"file": ("in.jsonl", batch_line("a").encode())},
                          data={"purpose": "batch"})
    body = {"input_file_id": up.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
    answers = await asyncio.gather(*(trial.post("/v1/batches", json=body) for _ in range(28)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 20 + [429] * 8
    refused = next(a for a in answers if a.status_code == 429).json()["error"]
    assert refused["code"] == "concurrent_batch_limit_exceeded"
    listed = (await trial.get("/v1/batches", params={"limit": 100})).json()["data"]
    assert len(listed) == 20


async def test_parallel_creates_from_several_keys_of_one_owner_share_the_limit(
    harness: Harness, tenants: Tenants,
) -> None:
    keys = [await tenants.client(f"team-key-{i}", owner="team", tier="trial") for i in range(5)]
    up = await keys[0].post("/v1/files", files={"file": ("in.jsonl", batch_line("a").encode())},
                            data={"purpose": "batch"})
    body = {"input_file_id": up.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
    answers = await asyncio.gather(*(key.post("/v1/batches", json=body)
                                     for key in keys for _ in range(10)))
    assert sum(a.status_code == 200 for a in answers) == 20
    assert all(a.status_code in (200, 429) for a in answers)


# --- D2: a line's numbers are read one way, for the quota and for running it --------------------


@pytest.mark.parametrize("value", ["4900000", 4900000.0, True, "2"])
async def test_max_tokens_of_another_type_is_refused_in_real_time(harness: Harness,
                                                                  value: object) -> None:
    response = await harness.client.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and error["code"] == "invalid_type"


async def test_max_tokens_of_another_type_fails_its_line_and_is_never_run(
    harness: Harness,
) -> None:
    batch = await harness.run_batch([batch_line("string", "a b c", max_tokens="2"),
                                     batch_line("float", "a b c", max_tokens=2.0),
                                     batch_line("fine", "a b c", max_tokens=2)])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = {e["custom_id"]: e for e in await harness.lines_of(batch["error_file_id"])}
    for custom_id in ("string", "float"):
        error = errors[custom_id]["response"]["body"]["error"]
        assert errors[custom_id]["response"]["status_code"] == 400
        assert (error["param"], error["code"]) == ("max_tokens", "invalid_type")


def test_quota_counts_the_output_limit_the_line_would_run_with() -> None:
    def tokens(**body: object) -> int:
        validator = InputValidator(endpoint=ENDPOINT, served_model=lambda m: m, max_requests=10,
                                   chunk_lines=10, max_listed_errors=10)
        validator.feed(batch_line("x", "hi", **body).encode() + b"\n")
        return validator.finish().tokens["instant-model"]

    base = tokens()  # no limit: the default output allowance
    assert tokens(max_tokens=4_900_000) > 4_900_000
    # A string or a float would not run (400 for that line), so it enqueues no output tokens.
    assert tokens(max_tokens="4900000") < base and tokens(max_tokens=4_900_000.0) < base


# --- D3, D4: strings that are not valid Unicode are refused at the edge ------------------------


async def test_lone_surrogate_in_batch_metadata_is_a_400_and_nothing_is_stored(
    harness: Harness,
) -> None:
    file_id = await harness.upload([batch_line("a")])
    response = await post_raw(harness.client, "/v1/batches", {
        "input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h",
        "metadata": {"k": "\ud800"}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("metadata.k", "invalid_value")
    listed = await harness.client.get("/v1/batches")
    assert listed.status_code == 200 and listed.json()["data"] == []


@pytest.mark.parametrize(("path", "body", "param"), [
    (ENDPOINT, {"model": "instant-model",
                "messages": [{"role": "user", "content": "a\udfffb"}]}, "messages[0].content"),
    (ENDPOINT, {"model": "instant\ud800", "messages": [{"role": "user", "content": "x"}]},
     "model"),
    ("/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/chat/\ud800",
                     "completion_window": "24h"}, "endpoint"),
    ("/v1/batches", {"input_file_id": "file-x", "endpoint": ENDPOINT,
                     "completion_window": "\udc00"}, "completion_window"),
    ("/v1/batches", {"input_file_id": "file-\ud800", "endpoint": ENDPOINT,
                     "completion_window": "24h"}, "input_file_id"),
    ("/v1/batches", {"input_file_id": "file-x", "endpoint": ENDPOINT, "completion_window": "24h",
                     "metadata": {"\ud800": "v"}}, "metadata"),
    ("/admin/keys", {"name": "n\ud800"}, "name"),
])
async def test_lone_surrogates_anywhere_in_a_json_body_are_a_400(
    harness: Harness, path: str, body: dict[str, Any], param: str,
) -> None:
    response = await post_raw(harness.client, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    for listing in ("/v1/batches", "/admin/keys"):
        assert (await harness.client.get(listing)).status_code == 200


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/admin/keys", {"name": "a\x00b"}, "name"),
    ("/admin/keys", {"name": "n", "owner": "\x00"}, "owner"),
    ("/v1/batches", {"input_file_id": "file-\x00", "endpoint": ENDPOINT,
                     "completion_window": "24h"}, "input_file_id"),
    ("/v1/batches", {"input_file_id": "file-x", "endpoint": ENDPOINT, "completion_window": "24h",
                     "metadata": {"k": "v\x00"}}, "metadata.k"),
])
async def test_a_nul_character_in_a_stored_string_is_a_400(
    harness: Harness, path: str, body: dict[str, Any], param: str,
) -> None:
    """PostgreSQL's text cannot hold U+0000: refused at the edge on every backend."""
    response = await post_raw(harness.client, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_a_nul_character_in_a_query_or_path_parameter_is_a_400(harness: Harness) -> None:
    for url, param in (("/v1/files?after=file-%00", "after"), ("/v1/batches/batch_%00", "batch_id"),
                       ("/v1/files?purpose=%00", "purpose"), ("/admin/keys?after=%00", "after")):
        response = await harness.client.get(url)
        assert response.status_code in (400, 404), (url, response.text)
        if response.status_code == 400:
            assert response.json()["error"]["param"] == param, url
    # A chat message may hold one: it is never stored.
    response = await post_raw(harness.client, ENDPOINT, {
        "model": "instant-model", "messages": [{"role": "user", "content": "a\x00b"}]})
    assert response.status_code == 200, response.text


# --- D6: an upload holds only the fields the endpoint knows ------------------------------------


def multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "probe-boundary"
    out = bytearray()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_upload_with_unknown_fields_is_refused_before_they_pile_up(
    harness: Harness,
) -> None:
    parts = [(f"junk{i}", b"x" * 60_000, None) for i in range(200)]
    body, content_type = multipart([("purpose", b"batch", None), *parts,
                                    ("file", batch_line("a").encode(), "in.jsonl")])
    response = await harness.client.post("/v1/files", content=chunks_of(body),
                                         headers={"content-type": content_type})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", "junk0")
    assert (await harness.client.get("/v1/files")).json()["data"] == []


async def test_a_known_field_given_twice_is_refused(harness: Harness) -> None:
    body, content_type = multipart([("purpose", b"batch", None), ("purpose", b"batch", None),
                                    ("file", batch_line("a").encode(), "in.jsonl")])
    response = await harness.client.post("/v1/files", content=body,
                                         headers={"content-type": content_type})
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"


async def test_every_byte_of_an_upload_body_counts_against_the_limit(
    harness: Harness, tenants: Tenants,
) -> None:
    services = harness.services
    limit = services.files.upload_limit("batch", None)
    small = await tenants.client("small-uploader")
    services.settings.max_batch_file_bytes = 200_000  # the limit for purpose=batch
    try:
        data = (batch_line("a") + "\n").encode()
        data = data * (190_000 // len(data))  # the file alone is within the limit
        body, content_type = multipart([
            ("purpose", b"batch", None),
            ("expires_after[anchor]", b"x" * 60_000, None),
            ("expires_after[seconds]", b"9" * 60_000, None),
            ("file", data, "in.jsonl")])
        response = await small.post("/v1/files", content=chunks_of(body),
                                    headers={"content-type": content_type})
    finally:
        services.settings.max_batch_file_bytes = limit
    assert response.status_code == 400 and response.json()["error"]["code"] == "file_too_large"


# --- D7: what one key may hold on the real-time path -------------------------------------------


async def test_one_key_cannot_hold_more_than_its_share_of_real_time_slots(
    harness: Harness, tenants: Tenants,
) -> None:
    services = harness.services
    greedy, other = await tenants.client("greedy"), await tenants.client("polite")
    hung = {"model": "instant-model", "messages": [{"role": "user", "content": "HANG-ME"}]}
    holding = [asyncio.create_task(greedy.post(ENDPOINT, json={**hung, "n": 4}))
               for _ in range(2)]
    while services.realtime.total() < 8:
        await asyncio.sleep(0.01)
    refused = await greedy.post(ENDPOINT, json={**hung, "n": 1})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert refused.headers["retry-after"] == "1"
    served = await other.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "user", "content": "a b"}]})
    assert served.status_code == 200
    for task in holding:  # the client gives up: its hold is given back
        task.cancel()
    await asyncio.gather(*holding, return_exceptions=True)
    assert services.realtime.total() == 0
    again = await greedy.post(ENDPOINT, json={**hung, "n": 16, "messages": [
        {"role": "user", "content": "alone, one request may ask for n=16"}]})
    assert again.status_code == 200 and len(again.json()["choices"]) == 16


# --- smaller findings --------------------------------------------------------------------------


async def test_failed_authentication_is_limited_per_client_address(harness: Harness) -> None:
    async with harness.client_with(None) as anonymous:
        answers = [(await anonymous.get("/v1/models", headers={
            "Authorization": f"Bearer bd-wrong-{i}"})).status_code for i in range(61)]
        assert answers[:60] == [401] * 60 and answers[60] == 429
        locked = await anonymous.get("/v1/models", headers={"Authorization": "Bearer bd-x"})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        assert locked.json()["error"]["code"] == "too_many_failed_authentications"
        harness.clock.advance(60)
        assert (await anonymous.get("/v1/models", headers={
            "Authorization": "Bearer bd-wrong-again"})).status_code == 401


async def test_the_operator_owner_is_reserved_and_keys_are_revoked_by_id(
    harness: Harness,
) -> None:
    for body in ({"name": "x", "owner": "default"}, {"name": "default"}):
        response = await harness.client.post("/admin/keys", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "owner"
    twins = [(await harness.client.post("/admin/keys", json={"name": "twin", "owner": o})).json()
             for o in ("team-a", "team-b")]
    by_name = await harness.client.post("/admin/keys/twin/revoke")
    assert by_name.status_code == 404  # a name is not an id: nothing is revoked
    first = await harness.client.post(f"/admin/keys/{twins[0]['id']}/revoke")
    assert first.status_code == 200 and first.json()["owner"] == "team-a"
    keys = {k["id"]: k for k in (await harness.client.get("/admin/keys")).json()["data"]}
    assert keys[twins[1]["id"]]["revoked_at"] is None


async def test_authentication_comes_before_the_body_is_parsed(harness: Harness) -> None:
    async with harness.client_with(None) as anonymous:
        for body in (b"{not json", raw_json({"metadata": {"k": "\ud800"}})):
            response = await anonymous.post("/v1/batches", content=body,
                                            headers={"content-type": "application/json"})
            assert response.status_code == 401


async def test_a_chunked_json_body_over_the_limit_is_a_413_with_a_code(harness: Harness) -> None:
    big = b'{"model": "' + b"x" * (harness.settings.max_json_body_bytes + 10) + b'"}'
    response = await harness.client.post(ENDPOINT, content=chunks_of(big),
                                         headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_a_jsonl_file_that_starts_with_a_bom_runs(harness: Harness) -> None:
    data = b"\xef\xbb\xbf" + (batch_line("first") + "\n" + batch_line("second") + "\n").encode()
    batch = await harness.create_batch(await harness.upload(data))
    await harness.worker.drain()
    batch = await harness.batch(batch["id"])
    assert batch["status"] == "completed", batch["errors"]
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    lines = await harness.lines_of(batch["output_file_id"])
    assert {line["custom_id"] for line in lines} == {"first", "second"}


async def test_an_empty_stop_string_stops_nothing(harness: Harness) -> None:
    assert ChatCompletionRequest.model_validate({
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "stop": ["", "zzz"]}).stop_list == ["zzz"]  # what every engine stops on
    for stop in ("", [""], ["", "zzz"]):
        response = await harness.client.post(ENDPOINT, json={
            "model": "instant-model", "messages": [{"role": "user", "content": "a b"}],
            "stop": stop})
        assert response.json()["choices"][0]["message"]["content"] == "echo: a b"


@pytest.mark.parametrize(("param", "value", "code"), [
    ("tools", [{"type": "function", "function": {"name": "f"}}], "unsupported_parameter"),
    ("tool_choice", "auto", "invalid_value"),  # OpenAI: only allowed when tools are given
    ("functions", [{"name": "f"}], "unsupported_parameter"),
    ("function_call", "auto", "unsupported_parameter"),
    ("guided_json", {"type": "object"}, "unsupported_parameter"),
])
async def test_tools_are_refused_by_name_where_they_would_be_ignored(
        harness: Harness, param: str, value: object, code: str) -> None:
    """The instant engine calls no tools; the deprecated `functions` and vLLM's removed
    `guided_*` fields are refused on every engine."""
    response = await harness.client.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "user", "content": "x"}], param: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


async def test_chat_requests_openai_would_refuse(harness: Harness) -> None:
    role = await harness.client.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "wizard", "content": "x"}]})
    assert role.status_code == 400
    assert role.json()["error"]["param"] == "messages[0].role"
    typo = await harness.client.post("/v1/batches", json={
        "input_file_id": "file-x", "endpoint": ENDPOINT, "completion_window": "24h",
        "metadatas": {}})
    assert typo.status_code == 400
    assert (typo.json()["error"]["code"], typo.json()["error"]["param"]) == (
        "unknown_parameter", "metadatas")
    ok = await harness.client.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "user", "content": "x"}]})
    assert isinstance(ok.json()["system_fingerprint"], str)


async def test_a_stream_that_breaks_inside_reports_no_internal_text(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchd.engines.base import Delta
    from batchd.engines.instant import InstantEngine

    async def broken_later(*_args: object, **_kwargs: object) -> AsyncIterator[object]:
        yield Delta(index=0, text="partial")
        raise RuntimeError("this function takes at least 5 arguments (4 given)")

    monkeypatch.setattr(InstantEngine, "chat_stream", broken_later)
    response = await harness.client.post(ENDPOINT, json={
        "model": "instant-model", "messages": [{"role": "user", "content": "x"}],
        "stream": True})
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "internal_error" and "arguments" not in error["message"]
    assert events[-1] == "[DONE]"


async def test_a_stream_refused_before_its_first_event_gives_its_slots_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused when the engine is asked (as llama.cpp checks the context) or at its first
    event: a 400 either way, and nothing left held against the key."""
    from batchd.engines.instant import InstantEngine
    from batchd.errors import InvalidRequest

    services = harness.services
    too_long = InvalidRequest("too long", code="context_length_exceeded", param="messages")

    def refused_at_once(*_args: object, **_kwargs: object) -> AsyncIterator[object]:
        raise too_long

    async def refused_first(*_args: object, **_kwargs: object) -> AsyncIterator[object]:
        raise too_long
        yield  # pragma: no cover

    for refuse in (refused_at_once, refused_first):
        monkeypatch.setattr(InstantEngine, "chat_stream", refuse)
        for path, body in ((ENDPOINT, {"messages": [{"role": "user", "content": "x"}]}),
                           ("/v1/responses", {"input": "x"})):
            response = await harness.client.post(path, json={
                "model": "instant-model", "stream": True, **body})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "context_length_exceeded"
            assert services.realtime.total() == 0
