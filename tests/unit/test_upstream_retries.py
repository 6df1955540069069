"""The upstream engine's retries and routing, against an OpenAI-compatible server that is a
function (tests/support/fake_http.py): which answers are retried, how often, on which server, and
what the caller gets in the end; and how an answer is read. The real wire, and one retry
over it, are tested against llama_cpp.server in integration/test_upstream_engine.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from batchd.engines.base import EngineFailure, EngineRequestError, EngineUnavailable
from batchd.engines.upstream import UpstreamEngine, UpstreamOptions
from batchd.openai.chat import ChatCompletionRequest
from tests.support.fake_http import FakeHttp

LIVE, DEAD = "http://live.test/v1", "http://dead.test/v1"

Maker = Callable[..., UpstreamEngine]


class FakeUpstream:
    """Answers each chat completion, first with the statuses in `faults` (an OpenAI error
    body, Retry-After: 0); a host in `dead` refuses connections."""

    def __init__(self) -> None:
        self.faults: list[int] = []
        self.dead: set[str] = set()
        self.seen = 0  # requests that reached a live host

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in self.dead:
            raise httpx.ConnectError("All connection attempts failed", request=request)
        self.seen += 1
        if self.faults:
            status = self.faults.pop(0)
            return httpx.Response(
                status, headers={"retry-after": "0"},
                json={"error": {"message": f"injected {status}", "type": "x",
                                "param": "temperature" if status == 400 else None,
                                "code": "injected"}})
        usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15,
                 "prompt_tokens_details": {"cached_tokens": 4}}
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(200, json={
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "up",
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Hello there, friend"}}],
                "usage": usage})
        return httpx.Response(200, json={
            "id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "up",
            "choices": [{"index": 0, "finish_reason": "length", "text": " Paris, of course"}],
            "usage": usage})


def chat(content: str = "Say hello.") -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "up", "messages": [{"role": "user", "content": content}], "max_tokens": 6,
         "temperature": 0})


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def make_engine(upstream: FakeUpstream) -> AsyncIterator[Maker]:
    engines: list[UpstreamEngine] = []

    def make(*urls: str, **options: float) -> UpstreamEngine:
        engine = UpstreamEngine(UpstreamOptions(base_urls=list(urls), backoff_seconds=0.01,
                                                **options), model_id="up",
                                http=FakeHttp(upstream))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


async def test_persistent_failure_is_an_engine_error_after_bounded_retries(
    make_engine: Maker, upstream: FakeUpstream
) -> None:
    engine = make_engine(LIVE, max_retries=2)
    # Unavailable (503 and the like): the request is not at fault and waits (worker/capacity).
    upstream.faults[:] = [503] * 3
    before = upstream.seen
    with pytest.raises(EngineUnavailable, match="failed 3 times"):
        await engine.chat(chat())
    assert upstream.seen - before == 3
    # A 500 every time may be this request's doing: it fails alone, as a 500 line.
    upstream.faults[:] = [500] * 3
    with pytest.raises(EngineFailure, match="failed 3 times") as failed:
        await engine.chat(chat())
    assert not isinstance(failed.value, EngineUnavailable)


async def test_a_client_error_is_the_requests_own_and_not_retried(
    make_engine: Maker, upstream: FakeUpstream
) -> None:
    engine = make_engine(LIVE)
    upstream.faults[:] = [400]
    before = upstream.seen
    with pytest.raises(EngineRequestError) as caught:
        await engine.chat(chat())
    assert caught.value.status_code == 400 and caught.value.param == "temperature"
    assert upstream.seen - before == 1


async def test_a_dead_server_is_routed_around(make_engine: Maker, upstream: FakeUpstream) -> None:
    upstream.dead.add("dead.test")
    engine = make_engine(DEAD, LIVE, initial_concurrency=2)
    results = await asyncio.gather(*(engine.chat(chat(f"Say {i}.")) for i in range(6)))
    assert all(r.choices[0].text for r in results)
    by_url = {t.base_url: t for t in engine.targets}
    assert by_url[DEAD].limit <= 1 and by_url[LIVE].in_flight == 0


async def test_chat_and_text_completions_are_read_alike(make_engine: Maker) -> None:
    from batchd.openai.completions import CompletionRequest

    engine = make_engine(LIVE)
    completion = await engine.complete(CompletionRequest.model_validate(
        {"model": "up", "prompt": "The capital of France is", "max_tokens": 6}))
    for result, text in ((await engine.chat(chat()), "Hello there, friend"),
                         (completion, " Paris, of course")):
        assert [(c.text, c.finish_reason) for c in result.choices] == [(text, "length")]
        assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (9, 6, 4)
