"""The upstream engine passes a chat request on as the client sent it (tools, response_format,
parameters batchd does not know) and the server's message back as it came (tool calls,
refusal, reasoning under either name), streamed or whole; image URLs reach it only from
allowed hosts. Against a recording fake server (tests/support/fake_http.py); the same against
llama_cpp.server is in integration/test_upstream_engine.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from batchd.engines.base import Delta, EngineRequestError, Usage
from batchd.engines.upstream import UpstreamEngine, UpstreamOptions
from batchd.openai.chat import ChatCompletionRequest
from batchd.serving.chat import _delta, _message
from tests.support.fake_http import FakeHttp

BASE = "http://gpu.test/v1"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}]
MESSAGE = {"role": "assistant", "content": None, "refusal": None,
           "reasoning_content": "The user wants weather.",
           "tool_calls": [{"id": "call_abc", "type": "function",
                           "function": {"name": "get_weather",
                                        "arguments": "{\"city\":\"Paris\"}"}}],
           "annotations": []}
USAGE = {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32,
         "completion_tokens_details": {"reasoning_tokens": 5}}
CHUNKS: list[dict[str, Any]] = [
    {"role": "assistant", "content": ""},
    {"reasoning": "Think"},
    {"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Paris\"}"}}]},
]


class Recorder:
    """An OpenAI-compatible server that keeps every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if not body.get("stream"):
            return httpx.Response(200, json={
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "up",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": MESSAGE,
                             "logprobs": None}], "usage": USAGE})
        events = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                  for delta in CHUNKS]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        events.append({"choices": [], "usage": USAGE})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def engine(recorder: Recorder) -> AsyncIterator[UpstreamEngine]:
    engine = UpstreamEngine(UpstreamOptions(base_urls=[BASE], image_url_hosts=["img.example"]),
                            model_id="served-name", http=FakeHttp(recorder))
    yield engine
    await engine.aclose()


def request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "served-name", "messages": [{"role": "user", "content": "Weather?"}],
         **body})


async def test_tools_schemas_and_unknown_parameters_go_on_unchanged(
        engine: UpstreamEngine, recorder: Recorder) -> None:
    schema = {"type": "object", "properties": {"a": {"type": ["string", "null"],
                                                     "default": None}},
              "required": ["a"], "additionalProperties": False}
    await engine.chat(request(
        tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "out", "schema": schema, "strict": True}},
        top_k=20, chat_template_kwargs={"enable_thinking": False}, temperature=0.5))
    sent = recorder.bodies[-1]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    # by its wire name, and with the schema's own nulls kept
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert "schema_" not in json.dumps(sent)
    assert sent["top_k"] == 20 and sent["chat_template_kwargs"] == {"enable_thinking": False}
    # only what the client set (no defaults of batchd's), for the served model's own name
    assert set(sent) == {"model", "messages", "tools", "tool_choice", "parallel_tool_calls",
                         "response_format", "top_k", "chat_template_kwargs", "temperature",
                         "stream"}
    assert sent["model"] == "served-name" and sent["stream"] is False


async def test_a_tool_conversation_goes_on_with_its_calls_and_results(
        engine: UpstreamEngine, recorder: Recorder) -> None:
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": MESSAGE["tool_calls"]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "21 C"}]
    await engine.chat(request(messages=messages, tools=TOOLS))
    assert recorder.bodies[-1]["messages"] == messages


async def test_the_message_comes_back_as_the_server_sent_it(engine: UpstreamEngine) -> None:
    result = await engine.chat(request(tools=TOOLS))
    choice = result.choices[0]
    assert _message(choice) == MESSAGE
    assert choice.finish_reason == "tool_calls" and choice.tool_calls == MESSAGE["tool_calls"]
    assert choice.reasoning == "The user wants weather."
    assert result.reasoning_tokens == 5 and result.completion_tokens == 12


async def test_streamed_tool_calls_and_reasoning_come_back_as_sent(
        engine: UpstreamEngine) -> None:
    events = [e async for e in engine.chat_stream(request(tools=TOOLS))]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert [_delta(d) for d in deltas[:-1]] == CHUNKS[1:]  # the empty opening says nothing
    assert deltas[0].reasoning == "Think"
    assert deltas[-1].finish_reason == "tool_calls"
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.reasoning_tokens == 5


@pytest.mark.parametrize("url, allowed", [
    ("data:image/png;base64,iVBORw0KGgo=", True),
    ("https://img.example/cat.png", True),
    ("HTTP://IMG.EXAMPLE:8080/cat.png", True),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("https://img.example.evil.test/cat.png", False),
    ("http://localhost:8000/v1/models", False),
    ("file:///etc/passwd", False),
    ("ftp://img.example/cat.png", False),
    ("http://[::1/", False),
    ("https://img.example@10.0.0.1/cat.png", False),
    ("https://img.example\\@10.0.0.1/cat.png", False),
    (" file:/etc/passwd", False),
    ("gopher://img.example/cat.png", False),
])
async def test_image_urls_reach_the_server_only_from_allowed_hosts(
        engine: UpstreamEngine, recorder: Recorder, url: str, allowed: bool) -> None:
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]
    req = request(messages=[{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": content}])
    if allowed:
        await engine.chat(req)
        assert recorder.bodies[-1]["messages"][1]["content"] == content
        return
    for attempt in (engine.chat(req), _first(engine.chat_stream(req))):
        with pytest.raises(EngineRequestError) as refused:
            await attempt
        assert refused.value.param == "messages[1].content[1].image_url.url"
        assert refused.value.code == "invalid_image_url"
    assert recorder.bodies == []  # refused before anything was sent


@pytest.mark.parametrize(("part", "where"), [
    ({"type": "video_url", "video_url": {"url": "http://10.0.0.1/v.mp4"}}, "video_url.url"),
    ({"type": "audio_url", "audio_url": "http://10.0.0.1/a.wav"}, "audio_url"),
    ({"type": "file", "file": {"file_url": "https://10.0.0.1/doc.pdf"}}, "file.file_url"),
    ({"image_url": {"url": "http://10.0.0.1/cat.png"}}, "type"),  # untyped: type by key
    ({"type": "new_kind", "sources": [{"uri": "http://10.0.0.1/x"}]}, "sources[0].uri"),
])
async def test_every_url_a_server_could_fetch_is_checked(
        engine: UpstreamEngine, recorder: Recorder, part: dict[str, Any], where: str) -> None:
    req = request(messages=[{"role": "user", "content": [part]}])
    with pytest.raises(EngineRequestError) as refused:
        await engine.chat(req)
    assert refused.value.param == f"messages[0].content[0].{where}"
    assert recorder.bodies == []
    # text is not fetched: a URL in it goes on as written
    text = [{"type": "text", "text": "http://10.0.0.1/ is down?"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]
    await engine.chat(request(messages=[{"role": "user", "content": text}]))
    assert recorder.bodies[-1]["messages"][0]["content"] == text


async def _first(events: AsyncIterator[object]) -> object:
    return await anext(aiter(events))
