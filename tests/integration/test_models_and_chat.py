from __future__ import annotations

import json

from tests.support.harness import Harness


async def test_models_list_ids_and_aliases(harness: Harness) -> None:
    listed = (await harness.client.get("/v1/models")).json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    assert ids == ["instant-model", "org/instant-alias", "org/second-alias", "slow-model",
                   "embed-model", "both-model"]
    assert all(m["object"] == "model" and "created" in m and m["owned_by"]
               for m in listed["data"])


async def test_model_ids_with_slash_raw_and_percent_encoded(harness: Harness) -> None:
    for path in ("/v1/models/org/instant-alias", "/v1/models/org%2Finstant-alias"):
        response = await harness.client.get(path)
        assert response.status_code == 200 and response.json()["id"] == "org/instant-alias"
    missing = await harness.client.get("/v1/models/no%2Fsuch")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_chat_completion(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", json={
        "model": "org/instant-alias", "messages": [{"role": "user", "content": "a b c"}],
        "max_tokens": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "org/instant-alias"
    assert body["choices"][0]["message"]["content"] == "echo: a"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


async def test_chat_streaming_with_usage(harness: Harness) -> None:
    response = await harness.client.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": "one two"}],
        "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: one two"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_chat_errors(harness: Harness) -> None:
    unknown = await harness.client.post("/v1/chat/completions", json={
        "model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    missing = await harness.client.post("/v1/chat/completions", json={"model": "instant-model"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    bad = await harness.client.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": "x"}],
        "temperature": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"


async def test_unknown_route_is_an_envelope_404(harness: Harness) -> None:
    response = await harness.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
