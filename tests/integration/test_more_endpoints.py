"""/v1/responses, /v1/completions and /v1/embeddings: real time and as batch endpoints, on the
instant engine (it echoes its input, one word a token; embeddings are hash-derived)."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.harness import Harness


def line(custom_id: str, url: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


# --- /v1/responses ------------------------------------------------------------------------

async def test_a_response_from_a_string_input(harness: Harness) -> None:
    response = await harness.client.post("/v1/responses", json={
        "model": "instant-model", "input": "tell me a joke", "instructions": "Be brief.",
        "metadata": {"run": "7"}})
    body = response.json()
    assert response.status_code == 200, body
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed" and body["error"] is None
    assert body["instructions"] == "Be brief." and body["metadata"] == {"run": "7"}
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["status"] == "completed" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": "echo: tell me a joke",
                                   "annotations": [], "logprobs": []}]
    usage = body["usage"]
    assert usage["output_tokens"] == 5 and usage["output_tokens_details"] == {
        "reasoning_tokens": 0}
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_a_response_from_messages_with_text_parts_and_a_token_limit(
        harness: Harness) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    response = await harness.client.post("/v1/responses", json={
        "model": "instant-model", "max_output_tokens": 16, "input": [
            {"role": "developer", "content": "system words"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "first "},
                         {"type": "input_text", "text": words}]}]})
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"].split()[:2] == ["echo:", "first"]
    assert body["usage"]["output_tokens"] == 16


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"background": True}, "background"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    # The instant engine answers text only; the word "json" is in the input, as OpenAI asks.
    ({"text": {"format": {"type": "json_object"}}, "input": "in json"}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}}, "input"),
    ({"text": {"format": {"type": "json_schema", "name": "s"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "name": "s", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}}}}}, "text.format.schema"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].content[1].type"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}]},
     "input[0].type"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
    ({"input": []}, "input"),
    ({"max_output_tokens": 15}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"store": True}, "store"),
    ({"truncation": "auto"}, "truncation"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
])
async def test_what_responses_cannot_do_is_a_400_naming_it(
        harness: Harness, extra: dict[str, Any], param: str) -> None:
    body = {"model": "instant-model", "input": "hi", **extra}
    error = error_of(await harness.client.post("/v1/responses", json=body))
    assert error["param"] == param


async def test_a_streamed_response_is_the_responses_event_sequence(harness: Harness) -> None:
    response = await harness.client.post("/v1/responses", json={
        "model": "instant-model", "input": "one two three", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        kind_line, data_line = block.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert kind_line == f"event: {event['type']}"
        events.append(event)
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 4,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"].endswith(".delta")) == \
        "echo: one two three"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 4
    assert final["output"][0]["content"][0]["text"] == "echo: one two three"
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1


async def test_embeddings_models_do_not_answer_responses(harness: Harness) -> None:
    error = error_of(await harness.client.post("/v1/responses", json={
        "model": "embed-model", "input": "hi"}))
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "/v1/responses" in error["message"] and "/v1/embeddings" in error["message"]


# --- /v1/completions ----------------------------------------------------------------------

async def test_text_completions_for_several_prompts_in_order(harness: Harness) -> None:
    response = await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": ["a b", "c d e"], "n": 2, "max_tokens": 3,
        "echo": True})
    body = response.json()
    assert response.status_code == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    texts = [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]]
    assert texts == [(0, "a becho: a b", "stop"), (1, "a becho: a b", "length"),
                     (2, "c d eecho: c d", "length"), (3, "c d eecho: c d", "length")]
    assert body["usage"]["completion_tokens"] == 3 + 3 + 3 + 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


async def test_text_completion_defaults_token_prompts_and_stops(harness: Harness) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    default = (await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": words})).json()
    assert default["choices"][0]["finish_reason"] == "length"  # OpenAI's default: 16 tokens
    assert default["usage"]["completion_tokens"] == 16
    tokens = (await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": [[5, 6], [7]], "stop": "t6"})).json()
    assert [c["text"] for c in tokens["choices"]] == ["echo: t5 ", "echo: t7"]
    null = (await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": words, "max_tokens": None})).json()
    assert null["usage"]["completion_tokens"] == 16  # an explicit null is the default too


@pytest.mark.parametrize(("extra", "param"), [
    ({"suffix": "end"}, "suffix"),
    ({"stream": True, "logprobs": 1}, "logprobs"),
    ({"best_of": 3}, "best_of"),
    ({"echo": True, "logprobs": 2}, "echo"),
    ({"logprobs": 9}, "logprobs"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1, -2]]}, "prompt"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
])
async def test_what_completions_cannot_do_is_a_400_naming_it(
        harness: Harness, extra: dict[str, Any], param: str) -> None:
    body = {"model": "instant-model", "prompt": "hi", **extra}
    error = error_of(await harness.client.post("/v1/completions", json=body))
    assert error["param"] == param


async def test_streamed_text_completions_as_openai_sends_them(harness: Harness) -> None:
    response = await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": ["a b", "c d e"], "n": 2, "max_tokens": 3,
        "echo": True, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    whole = (await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": ["a b", "c d e"], "n": 2, "max_tokens": 3,
        "echo": True})).json()
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert finishes == {c["index"]: c["finish_reason"] for c in whole["choices"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize("eager", [True, False], ids=["when-asked", "at-first-event"])
async def test_a_streamed_completion_refused_before_its_first_event_is_an_http_400(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, eager: bool) -> None:
    """As chat and responses: a prompt the engine refuses (too long for the context), any of
    the request's prompts, is the 400 it would be without stream, not a 200 with an error
    event; nothing stays held against the key."""
    from batchd.engines.base import EngineRequestError
    from batchd.engines.instant import InstantEngine

    services = harness.services
    original = InstantEngine.complete_stream
    too_long = EngineRequestError("This model's maximum context length is 8 tokens.",
                                  code="context_length_exceeded", param="prompt")

    async def refused_first(*_args: object, **_kwargs: object) -> AsyncIterator[object]:
        raise too_long
        yield  # pragma: no cover

    def refusing(self: InstantEngine, request: Any, **kwargs: Any) -> AsyncIterator[object]:
        if "TOO-LONG" not in str(request.single):
            return original(self, request, **kwargs)
        if eager:
            raise too_long
        return refused_first()

    monkeypatch.setattr(InstantEngine, "complete_stream", refusing)
    for prompt in ("TOO-LONG", ["fine", "TOO-LONG"], ["fine"] * 5 + ["TOO-LONG"] + ["ok"]):
        response = await harness.client.post("/v1/completions", json={
            "model": "instant-model", "prompt": prompt, "stream": True, "n": 1})
        assert response.status_code == 400, (prompt, response.text)
        assert error_of(response)["code"] == "context_length_exceeded"
        assert services.realtime.total() == 0
    # An engine failure before the first event is its HTTP error too (500), as on chat.
    failed = await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": ["fine", "FAIL-ME"], "stream": True})
    assert failed.status_code == 500 and services.realtime.total() == 0


async def test_a_streamed_completion_that_fails_after_its_first_event_ends_with_an_error(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchd.engines.base import Delta, EngineRequestError
    from batchd.engines.instant import InstantEngine

    async def broken_later(*_args: object, **_kwargs: object) -> AsyncIterator[object]:
        yield Delta(index=0, text="partial")
        raise EngineRequestError("refused late", code="context_length_exceeded")

    monkeypatch.setattr(InstantEngine, "complete_stream", broken_later)
    response = await harness.client.post("/v1/completions", json={
        "model": "instant-model", "prompt": "x", "stream": True})
    assert response.status_code == 200  # the headers went out with "partial"
    events = [block.removeprefix("data: ") for block in response.text.strip().split("\n\n")]
    assert json.loads(events[0])["choices"][0]["text"] == "partial"
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "context_length_exceeded"


# --- /v1/embeddings -----------------------------------------------------------------------

async def test_embeddings_of_strings_and_token_arrays(harness: Harness) -> None:
    one = (await harness.client.post("/v1/embeddings", json={
        "model": "embed-model", "input": "the cat"})).json()
    assert one["object"] == "list" and one["model"] == "embed-model"
    [item] = one["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 8
    assert math.isclose(sum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-6)
    assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    many = (await harness.client.post("/v1/embeddings", json={
        "model": "both-model", "input": ["the cat", "a dog", "the cat"]})).json()
    vectors = [d["embedding"] for d in many["data"]]
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    tokens = await harness.client.post("/v1/embeddings", json={
        "model": "embed-model", "input": [[1, 2, 3], [4]]})
    assert tokens.status_code == 200 and len(tokens.json()["data"]) == 2
    flat = await harness.client.post("/v1/embeddings", json={
        "model": "embed-model", "input": [1, 2, 3]})
    assert flat.status_code == 200 and len(flat.json()["data"]) == 1


async def test_base64_embeddings_are_little_endian_float32_and_dimensions_shorten(
        harness: Harness) -> None:
    plain = (await harness.client.post("/v1/embeddings", json={
        "model": "embed-model", "input": "x y", "dimensions": 4})).json()
    packed = (await harness.client.post("/v1/embeddings", json={
        "model": "embed-model", "input": "x y", "dimensions": 4,
        "encoding_format": "base64"})).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack("<4f", raw)
    assert len(plain["data"][0]["embedding"]) == 4
    assert all(math.isclose(a, b, rel_tol=1e-6)
               for a, b in zip(decoded, plain["data"][0]["embedding"], strict=True))
    assert math.isclose(sum(x * x for x in decoded), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(("extra", "param"), [
    ({"input": ""}, "input[0]"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input[1]"),
    ({"input": [[1], []]}, "input[1]"),
    ({"input": ["x"] * 2049}, "input"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"dimensions": 0}, "dimensions"),
    ({"dimensions": 9}, "dimensions"),
    ({"input": {"text": "x"}}, "input"),
])
async def test_bad_embedding_requests_are_a_400_naming_the_parameter(
        harness: Harness, extra: dict[str, Any], param: str) -> None:
    body = {"model": "embed-model", "input": "x", **extra}
    error = error_of(await harness.client.post("/v1/embeddings", json=body))
    assert error["param"] == param


async def test_chat_models_do_not_embed_and_embedding_models_do_not_chat(
        harness: Harness) -> None:
    error = error_of(await harness.client.post("/v1/embeddings", json={
        "model": "org/instant-alias", "input": "x"}))
    assert error["code"] == "model_not_found" and "/v1/embeddings" in error["message"]
    error = error_of(await harness.client.post("/v1/chat/completions", json={
        "model": "embed-model", "messages": [{"role": "user", "content": "x"}]}))
    assert error["code"] == "model_not_found" and "/v1/chat/completions" in error["message"]
    error = error_of(await harness.client.post("/v1/completions", json={
        "model": "embed-model", "prompt": "x"}))
    assert "/v1/completions" in error["message"]
    missing = await harness.client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert error_of(missing, 404)["code"] == "model_not_found"


# --- as batch endpoints -------------------------------------------------------------------

async def run(harness: Harness, endpoint: str, lines: list[str]) -> dict[str, Any]:
    batch = await harness.create_batch(await harness.upload(lines), endpoint=endpoint)
    await harness.worker.drain()
    return await harness.batch(batch["id"])


async def test_a_responses_batch(harness: Harness) -> None:
    url = "/v1/responses"
    batch = await run(harness, url, [
        line("a", url, {"model": "instant-model", "input": "one two"}),
        line("b", url, {"model": "instant-model", "input": "x",
                        "tools": [{"type": "web_search"}]}),
        line("c", url, {"model": "instant-model", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]}]}),
    ])
    assert batch["status"] == "completed", batch
    assert batch["model"] == "instant-model" and batch["endpoint"] == url
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    out = {r["custom_id"]: r for r in await harness.lines_of(batch["output_file_id"])}
    assert out["a"]["response"]["status_code"] == 200
    assert out["a"]["response"]["body"]["output"][0]["content"][0]["text"] == "echo: one two"
    assert out["c"]["response"]["body"]["object"] == "response"
    [err] = await harness.lines_of(batch["error_file_id"])
    assert err["custom_id"] == "b" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "tools"
    assert batch["usage"]["output_tokens"] == 3 + 2


async def test_an_embeddings_batch(harness: Harness) -> None:
    url = "/v1/embeddings"
    batch = await run(harness, url, [
        line(f"e{i}", url, {"model": "embed-model", "input": [f"text {i}", "more"]})
        for i in range(5)
    ] + [line("bad", url, {"model": "embed-model", "input": ""})])
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    out = await harness.lines_of(batch["output_file_id"])
    assert sorted(r["custom_id"] for r in out) == [f"e{i}" for i in range(5)]
    assert all(len(r["response"]["body"]["data"]) == 2 for r in out)
    assert batch["usage"]["input_tokens"] == 5 * 3 and batch["usage"]["output_tokens"] == 0


async def test_a_completions_batch_with_mixed_models_has_no_batch_model(
        harness: Harness) -> None:
    url = "/v1/completions"
    batch = await run(harness, url, [
        line("p1", url, {"model": "instant-model", "prompt": "hello world", "max_tokens": 2}),
        line("p2", url, {"model": "slow-model", "prompt": ["x", "y"]}),
    ])
    assert batch["status"] == "completed", batch
    assert batch["model"] is None
    out = {r["custom_id"]: r["response"]["body"] for r in
           await harness.lines_of(batch["output_file_id"])}
    assert out["p1"]["choices"][0]["text"] == "echo: hello"
    assert [c["index"] for c in out["p2"]["choices"]] == [0, 1]


async def test_batch_lines_must_suit_the_endpoint_and_its_kind_of_model(
        harness: Harness) -> None:
    url = "/v1/embeddings"
    batch = await run(harness, url, [
        line("ok", url, {"model": "embed-model", "input": "x"}),
        line("chat-model", url, {"model": "instant-model", "input": "x"}),
        line("other-url", "/v1/chat/completions", {"model": "embed-model", "input": "x"}),
        line("no-input", url, {"model": "embed-model"}),
        line("streamed", "/v1/embeddings", {"model": "embed-model", "input": "x",
                                            "stream": True}),
    ])
    assert batch["status"] == "failed"
    errors = {(e["line"], e["code"], e["param"]) for e in batch["errors"]["data"]}
    assert errors == {(2, "model_not_found", "body.model"), (3, "invalid_url", "url"),
                      (4, "invalid_request", "body.input"),
                      (5, "streaming_unsupported", "body.stream")}
    message = next(e["message"] for e in batch["errors"]["data"] if e["line"] == 2)
    assert "/v1/embeddings" in message and "/v1/chat/completions" in message


async def test_every_openai_batch_endpoint_batchd_serves_is_accepted(harness: Harness) -> None:
    file_id = await harness.upload([line("a", "/v1/moderations", {"model": "instant-model"})])
    for endpoint in ("/v1/responses", "/v1/chat/completions", "/v1/embeddings",
                     "/v1/completions"):
        response = await harness.client.post("/v1/batches", json={
            "input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"})
        assert response.status_code == 200, response.text
    refused = await harness.client.post("/v1/batches", json={
        "input_file_id": file_id, "endpoint": "/v1/moderations", "completion_window": "24h"})
    assert error_of(refused)["param"] == "endpoint"


async def test_the_sdks_stream_helper_assembles_the_final_response(harness: Harness) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url="http://batchd/v1", api_key="sk-test-key",
                         http_client=harness.client)
    async with client.responses.stream(model="instant-model", input="alpha beta") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.output_text == "".join(deltas) == "echo: alpha beta"
    assert final.status == "completed" and final.usage is not None
    created = await client.responses.create(model="instant-model", input="gamma")
    assert created.output_text == "echo: gamma"
    embedded = await client.embeddings.create(model="embed-model", input=["a", "b"])
    assert [len(d.embedding) for d in embedded.data] == [8, 8]  # base64, decoded by the SDK
    completion = await client.completions.create(model="instant-model", prompt="p q")
    assert completion.choices[0].text == "echo: p q"
    pieces = [c.choices[0].text async for c in await client.completions.create(
        model="instant-model", prompt="r s", stream=True)]
    assert "".join(pieces) == "echo: r s"
