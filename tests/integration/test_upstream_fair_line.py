"""Requests waiting for an upstream server's room: real-time before batch work, then tenants
in turn. A small OpenAI-compatible stand-in answers each chat after a fixed delay, with the
engine allowed two requests at it at once, so everything else waits in the engine's line."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchd.engines.base import ChatResult, Priority
from batchd.engines.upstream import UpstreamEngine, UpstreamOptions
from batchd.limits.fair_line import FairLine
from batchd.openai.chat import ChatCompletionRequest
from tests.support.harness import as_owner
from tests.support.ports import free_port

pytestmark = pytest.mark.backend_independent
DELAY = 0.1


async def answer(request: Request) -> JSONResponse:
    body = await request.json()
    await asyncio.sleep(DELAY)
    return JSONResponse({
        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": body["messages"][0]["content"]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])
    instance = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
async def engine(server: str) -> AsyncIterator[UpstreamEngine]:
    """Allowed two requests at the server at once: everything else waits in its line."""
    engine = UpstreamEngine(UpstreamOptions(base_urls=[server], initial_concurrency=2,
                                            max_concurrency=2), model_id="m")
    yield engine
    await engine.aclose()


def chat(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": text}]})


async def finish_order(tasks: dict[str, asyncio.Task[ChatResult]]) -> list[str]:
    order: list[str] = []
    for name, task in tasks.items():
        task.add_done_callback(lambda _, name=name: order.append(name))
    await asyncio.gather(*tasks.values())
    return order


async def test_a_second_tenant_waits_one_turn_not_behind_the_firsts_pile(
    engine: UpstreamEngine,
) -> None:
    tasks = {f"a{i}": as_owner("a", lambda i=i: engine.chat(chat(f"a{i}")))
             for i in range(12)}
    await asyncio.sleep(DELAY / 2)  # two at the server, ten in line
    tasks["b"] = as_owner("b", lambda: engine.chat(chat("b")))
    order = await finish_order(tasks)
    # Served with the next free slot: before all but a few of the first tenant's.
    assert order.index("b") <= 4, order


async def test_real_time_requests_go_before_waiting_batch_work(
    engine: UpstreamEngine,
) -> None:
    tasks = {f"batch{i}": as_owner("", lambda i=i: engine.chat(
        chat(f"batch{i}"), priority=Priority.BATCH)) for i in range(12)}
    await asyncio.sleep(DELAY / 2)
    tasks["now"] = as_owner("b", lambda: engine.chat(chat("now")))
    order = await finish_order(tasks)
    assert order.index("now") <= 3, order


async def test_a_caller_that_gives_up_leaves_the_line_and_its_slot(
    engine: UpstreamEngine,
) -> None:
    waiting = [as_owner("a", lambda i=i: engine.chat(chat(f"a{i}"))) for i in range(6)]
    await asyncio.sleep(DELAY / 2)
    for task in waiting[2:]:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert not engine._line and sum(t.in_flight for t in engine.targets) == 0
    done = await as_owner("b", lambda: engine.chat(chat("after")))
    assert done.choices[0].text == "after"


def test_the_line_serves_priorities_then_owners_in_turn() -> None:
    line: FairLine[str] = FairLine()
    for name, priority, owner in [("a1", 1, "a"), ("a2", 1, "a"), ("a3", 1, "a"),
                                  ("b1", 1, "b"), ("c1", 0, "c"), ("b2", 1, "b")]:
        line.push(name, priority=priority, owner=owner)
    first = line.pop()
    assert first == "c1"
    second = line.pop()
    assert second == "a1"
    line.put_back("a1", priority=1, owner="a")  # not served: keeps its place
    assert [line.pop() for _ in range(len(line))] == ["a1", "b1", "a2", "b2", "a3"]
    assert line.pop() is None and len(line) == 0
    line.push("x", priority=1, owner="x")
    assert line.remove("x", priority=1, owner="x") and not line.remove("x", priority=1,
                                                                       owner="x")
