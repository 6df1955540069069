"""Responses, text completions and embeddings with the official openai SDK against the real
server and the real SmolLM2 model (llama.cpp), real time and as batches."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.support.server import Server

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def client(real_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=real_server.base_url, api_key=real_server.api_key) as client:
        yield client


def test_responses_with_the_sdk(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.",
                                       instructions="Answer in one short sentence.",
                                       max_output_tokens=16, temperature=0)
    assert response.output_text and response.status in ("completed", "incomplete")
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    assert response.usage.input_tokens_details.cached_tokens >= 0

    with client.responses.stream(model=MODEL, max_output_tokens=16, temperature=0, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Count to three."}]}],
    ) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    # The SDK's get_final_response() is for `response.completed` only (as with OpenAI); a
    # reply cut at max_output_tokens ends with `response.incomplete` instead.
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    assert "".join(deltas) == final.output_text and final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0

    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_1")
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_text_completions_with_the_sdk(client: OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=["The sky is", "Water is"],
                                           max_tokens=6, temperature=0, logprobs=2)
    assert [c.index for c in completion.choices] == [0, 1]
    first = completion.choices[0]
    assert first.text and first.logprobs is not None
    assert "".join(first.logprobs.tokens or []) == first.text
    assert all(len(top) <= 2 for top in first.logprobs.top_logprobs or [])
    assert completion.usage is not None and completion.usage.completion_tokens <= 12
    streamed = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == completion.choices[0].text
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 6


def test_embeddings_with_the_sdk(client: OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it: both forms must agree.
    packed = client.embeddings.create(model=MODEL, input=["a cat sat", "a cat sat", "rain"])
    plain = client.embeddings.create(model=MODEL, input="a cat sat", encoding_format="float")
    vectors = [d.embedding for d in packed.data]
    assert len(vectors[0]) == len(plain.data[0].embedding) == 576
    assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
               for a, b in zip(vectors[0], plain.data[0].embedding, strict=True))
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-4)
    same = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    other = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert same > 0.999 and other < same
    assert packed.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="x", dimensions=64)
    assert refused.value.body["param"] == "dimensions"  # type: ignore[index]


@pytest.mark.parametrize(("endpoint", "body"), [
    ("/v1/embeddings", {"input": "document {i}"}),
    ("/v1/responses", {"input": "Say {i}.", "max_output_tokens": 16}),
    ("/v1/completions", {"prompt": "Number {i} is", "max_tokens": 4}),
])
def test_batches_of_the_other_endpoints_with_the_sdk(
        client: OpenAI, endpoint: str, body: dict[str, object]) -> None:
    lines = []
    for i in range(6):
        filled = {k: v.format(i=i) if isinstance(v, str) else v for k, v in body.items()}
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": endpoint,
                                 "body": {"model": MODEL, "temperature": 0, **filled}
                                 if endpoint != "/v1/embeddings" else
                                 {"model": MODEL, **filled}}))
    upload = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(lines).encode())),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.model == MODEL
    assert batch.request_counts is not None and batch.request_counts.completed == 6
    assert batch.output_file_id is not None
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out) == [f"r{i}" for i in range(6)]
    kinds = {r["response"]["body"]["object"] for r in out}
    assert kinds == {{"/v1/embeddings": "list", "/v1/responses": "response",
                      "/v1/completions": "text_completion"}[endpoint]}


async def test_the_upstream_engine_forwards_embeddings_to_an_openai_compatible_server(
        real_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchd.engines.base import EngineRequestError
    from batchd.engines.upstream import UpstreamEngine, UpstreamOptions
    from batchd.openai.embeddings import EmbeddingInputs

    monkeypatch.setenv("UPSTREAM_KEY", real_server.api_key)
    engine = UpstreamEngine(UpstreamOptions(base_urls=[real_server.base_url], model=MODEL,
                                            api_key_env="UPSTREAM_KEY"), model_id="up")
    try:
        result = await engine.embed(EmbeddingInputs(texts=["one", "two words"]))
        assert [len(v) for v in result.vectors] == [576, 576] and result.prompt_tokens > 0
        tokens = await engine.embed(EmbeddingInputs(tokens=[[1, 2, 3]]))
        assert len(tokens.vectors) == 1
        with pytest.raises(EngineRequestError) as refused:  # the server's 400, passed on
            await engine.embed(EmbeddingInputs(texts=["x"], dimensions=8))
        assert refused.value.param == "dimensions"
    finally:
        await engine.aclose()


def test_a_stream_the_engine_refuses_at_once_is_an_http_error(client: OpenAI) -> None:
    too_long = "word " * 5000  # over the 4,096-token context of models.yaml's entry
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=MODEL, stream=True,
                                       messages=[{"role": "user", "content": too_long}])
    assert chat.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as response:
        client.responses.create(model=MODEL, input=too_long, stream=True)
    assert response.value.body["param"] == "input"  # type: ignore[index]
    # Text completions too, whichever of the request's prompts is refused.
    for prompt in (too_long, ["Say hi.", too_long]):
        with pytest.raises(openai.BadRequestError) as completion:
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, stream=True)
        assert completion.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
