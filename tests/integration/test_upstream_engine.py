"""The upstream engine against a real OpenAI-compatible server that is not batchd's code
(llama-cpp-python's `llama_cpp.server` on the default model), directly and through a proxy
that injects 429s and 5xx. The retry rules alone run against a fake server in
unit/test_upstream_retries.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchd.engines.base import (
    Delta,
    Usage,
)
from batchd.engines.upstream import UpstreamEngine, UpstreamOptions
from batchd.openai.chat import ChatCompletionRequest
from batchd.settings import Settings
from tests.support.harness import Harness
from tests.support.lines import batch_line
from tests.support.ports import free_port
from tests.support.server import start_llama_cpp_server

# The upstream engine against a real server: the same on every backend, so run once.
pytestmark = pytest.mark.backend_independent

Maker = Callable[..., UpstreamEngine]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = start_llama_cpp_server(
        tmp_path_factory.mktemp("llama-server") / "server.log")
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


class FaultyProxy:
    """Forwards to the real server, first answering `faults` with the given statuses."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[int] = []
        self.seen = 0
        self.port = free_port()
        app = Starlette(routes=[Route("/v1/chat/completions", self.handle, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request: Request) -> Response:
        self.seen += 1
        if self.faults:
            status = self.faults.pop(0)
            return JSONResponse({"error": {"message": f"injected {status}", "type": "x",
                                           "param": None,
                                           "code": "injected"}},
                                status_code=status, headers={"retry-after": "0"})
        async with httpx.AsyncClient(timeout=60) as client:
            upstream = await client.post(f"{self.upstream}/chat/completions",
                                         content=await request.body(),
                                         headers={"content-type": "application/json"})
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type="application/json")

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def proxy(llama_server: str) -> Iterator[FaultyProxy]:
    with FaultyProxy(llama_server) as running:
        yield running


def chat(content: str = "Say hello.", **params: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "up", "messages": [{"role": "user", "content": content}], "max_tokens": 6,
         "temperature": 0, **params})


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., UpstreamEngine]]:
    engines: list[UpstreamEngine] = []

    def make(*urls: str, **options: float) -> UpstreamEngine:
        engine = UpstreamEngine(UpstreamOptions(base_urls=list(urls), backoff_seconds=0.01,
                                                **options), model_id="up")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.aclose()


async def test_plain_and_streamed_chat_from_a_real_server(make_engine: Maker,
                                                          llama_server: str) -> None:
    engine = make_engine(llama_server)
    result = await engine.chat(chat())
    assert result.choices[0].text and result.completion_tokens == 6
    assert result.choices[0].finish_reason == "length" and result.prompt_tokens > 0
    events = [e async for e in engine.chat_stream(chat())]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text == result.choices[0].text
    assert isinstance(events[-1], Usage) and events[-1].completion_tokens > 0


async def test_429_and_5xx_are_retried_and_shrink_the_limit(make_engine: Maker,
                                                            proxy: FaultyProxy) -> None:
    engine = make_engine(proxy.base_url, initial_concurrency=8)
    proxy.faults[:] = [429, 503]
    before = proxy.seen
    result = await engine.chat(chat())
    assert result.choices[0].text
    assert proxy.seen - before == 3  # two injected failures, then the real answer
    assert engine.targets[0].limit < 8  # halved on overload, grown back a little since


async def test_concurrency_grows_while_latency_holds(make_engine: Maker, llama_server: str) -> None:
    engine = make_engine(llama_server, initial_concurrency=1, latency_tolerance=100)
    for i in range(4):
        await engine.chat(chat(f"Count {i}."))
    assert engine.targets[0].limit > 1.5


async def test_the_limit_finds_the_size_of_a_real_server(make_engine: Maker,
                                                        llama_server: str) -> None:
    """llama_cpp.server answers one request at a time: from 32 in flight, the queue it
    builds brings the limit down to a handful (throughput against it is measured in
    bench/upstream.py --llama; the default start, 128, takes four times as long here)."""
    engine = make_engine(llama_server, initial_concurrency=32)
    assert engine.targets[0].limit == 32
    rounds = 0
    while rounds < 6 and engine.targets[0].limit >= 16:  # one or two rounds of 32, as a rule
        await asyncio.gather(*(engine.chat(chat(f"Count to {i}.")) for i in range(32)))
        rounds += 1
    print(f"limit {engine.targets[0].limit:.1f} after {rounds} rounds of 32")
    assert engine.targets[0].limit < 16


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, llama_server: str) -> Settings:
    models = tmp_path / "upstream-models.yaml"
    models.write_text(f"models:\n  - id: remote-smol\n    engine: upstream\n"
                      f"    base_urls: [{llama_server}]\n")
    return settings.model_copy(update={"models": models})


async def test_a_batch_runs_on_an_upstream_server(harness: Harness) -> None:
    # Plain lines, a named tool call and a schema in llama-cpp-python's own dialect (its
    # `json_object` + `schema`: a parameter batchd does not know, passed on as it came).
    lines = [batch_line(f"r{i}", f"Say {i}.", model="remote-smol", max_tokens=4)
             for i in range(3)]
    lines.append(batch_line("tool", "What is the weather in Paris?", model="remote-smol",
                            max_tokens=40, temperature=0, tools=WEATHER,
                            tool_choice={"type": "function",
                                         "function": {"name": "get_weather"}}))
    lines.append(batch_line("json", "Describe a person as JSON.", model="remote-smol",
                            max_tokens=60, temperature=0,
                            response_format={"type": "json_object", "schema": PERSON}))
    batch = await harness.run_batch(lines)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 5
    out = {line["custom_id"]: line["response"]["body"]
           for line in await harness.lines_of(batch["output_file_id"])}
    assert {body["model"] for body in out.values()} == {"remote-smol"}
    (call,) = out["tool"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert out["tool"]["choices"][0]["finish_reason"] == "tool_calls"
    person = json.loads(out["json"]["choices"][0]["message"]["content"])
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


async def test_tool_calls_come_back_from_a_real_server_as_it_sent_them(
        make_engine: Maker, llama_server: str) -> None:
    engine = make_engine(llama_server)
    request = chat("What is the weather in Paris?", max_tokens=40, tools=WEATHER,
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    result = await engine.chat(request)
    message = result.choices[0].message
    assert message is not None and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["id"] and call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    # Streamed, the call arrives in the server's own pieces, which join to the same call.
    events = [e async for e in engine.chat_stream(request)]
    pieces = [call for e in events if isinstance(e, Delta) and e.delta
              for call in e.delta.get("tool_calls") or []]
    assert pieces and pieces[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(p["function"]["arguments"] for p in pieces)) == arguments


async def test_text_completions_are_forwarded_to_a_real_server(make_engine: Maker,
                                                               llama_server: str) -> None:
    from batchd.openai.completions import CompletionRequest

    engine = make_engine(llama_server)
    request = CompletionRequest.model_validate(
        {"model": "up", "prompt": "The capital of France is", "max_tokens": 5,
         "temperature": 0})
    result = await engine.complete(request)
    assert result.choices[0].text and result.completion_tokens == 5
    assert result.prompt_tokens > 0
    events = [e async for e in engine.complete_stream(request)]
    assert "".join(e.text for e in events if isinstance(e, Delta)) == result.choices[0].text
    assert isinstance(events[-1], Usage) and events[-1].completion_tokens > 0
    # echo is the endpoint's to add: the upstream server must not echo the prompt as well.
    echoed = await engine.complete(request.model_copy(update={"echo": True}))
    assert echoed.choices[0].text == result.choices[0].text
