"""The real llama.cpp engine on the shipped SmolLM2 model (short generations only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from batchd.engines.base import Delta, EngineRequestError, Usage
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions, default_model_path
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from tests.support.waiting import eventually_async

# The engine alone: the same on every backend, so run once.
pytestmark = pytest.mark.backend_independent


def chat(content: str, **params: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": content}], **params})


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512))
    yield engine
    asyncio.run(engine.aclose())


def test_default_model_is_found_in_the_package() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


async def test_max_tokens_gives_length_and_exact_usage(engine: LlamaCppEngine) -> None:
    result = await engine.chat(chat("Write a long story about a dragon.", max_tokens=5,
                                    temperature=0))
    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 5 and result.prompt_tokens > 5
    assert result.choices[0].text


async def test_temperature_zero_is_deterministic_and_n_gives_n_choices(
    engine: LlamaCppEngine,
) -> None:
    request = chat("Name a colour.", max_tokens=6, temperature=0, n=2)
    first, second = await engine.chat(request), await engine.chat(request)
    assert len(first.choices) == 2
    assert [c.text for c in first.choices] == [c.text for c in second.choices]


async def test_stop_sequence_ends_generation(engine: LlamaCppEngine) -> None:
    free = await engine.chat(chat("Count from 1 to 20, separated by commas.", max_tokens=24,
                                  temperature=0))
    text = free.choices[0].text
    assert len(text) > 8
    cut = text[5:8]  # any piece of the known answer must end it just before that piece
    stopped = await engine.chat(chat("Count from 1 to 20, separated by commas.",
                                     max_tokens=24, temperature=0, stop=[cut]))
    assert stopped.choices[0].text == text[: text.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"


async def test_too_long_prompt_is_a_request_error(engine: LlamaCppEngine) -> None:
    with pytest.raises(EngineRequestError) as caught:
        await engine.chat(chat("word " * 2000, max_tokens=4))
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.status_code == 400


async def test_logprobs_of_each_token_with_alternatives(engine: LlamaCppEngine) -> None:
    result = await engine.chat(chat("Say yes.", max_tokens=3, temperature=0, logprobs=True,
                                    top_logprobs=2))
    content = result.choices[0].logprobs["content"]  # type: ignore[index]
    assert len(content) == result.completion_tokens
    assert "".join(item["token"] for item in content) == result.choices[0].text
    for item in content:
        assert item["logprob"] <= 0 and len(item["top_logprobs"]) == 2
        # At temperature 0 the chosen token is the most likely one.
        assert item["top_logprobs"][0]["token"] == item["token"]


async def test_cancel_stops_generation_promptly(engine: LlamaCppEngine) -> None:
    task = asyncio.create_task(engine.chat(chat("Count from 1 to 1000, one number per line.",
                                                temperature=0, max_tokens=400)))
    scheduler = engine._scheduler
    await eventually_async(lambda: any(seq.generated for seq in list(scheduler.active)),
                           what="the engine is generating the answer")
    assert not task.done()  # 400 tokens take several seconds on a CPU
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The engine thread is free again almost at once, not after 400 tokens.
    started = time.monotonic()
    await engine.chat(chat("hi", max_tokens=1))
    assert time.monotonic() - started < 3


async def test_stream_matches_the_plain_answer(engine: LlamaCppEngine) -> None:
    request = chat("Say hello to Ada.", max_tokens=8, temperature=0)
    plain = await engine.chat(request)
    events = [e async for e in engine.chat_stream(request)]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text == plain.choices[0].text
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert usage.prompt_tokens == plain.prompt_tokens
    assert usage.completion_tokens == plain.completion_tokens


SHARED_SYSTEM = ("You are a careful assistant for a library. " * 12).strip()


def ask(system: str, question: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({
        "model": "m", "max_tokens": 10, "temperature": 0,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": question}]})


@pytest.fixture(scope="module")
def single() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512, parallel=1, prefix_cache=0))
    yield engine
    asyncio.run(engine.aclose())


async def test_batched_generation_matches_one_at_a_time(
    engine: LlamaCppEngine, single: LlamaCppEngine
) -> None:
    requests = [chat(f"Name an animal that starts with the letter {c}.", max_tokens=12,
                     temperature=0) for c in "ABCDEFGH"]
    together = await asyncio.gather(*(engine.chat(r) for r in requests))
    alone = [await single.chat(r) for r in requests]
    # Batched float maths may reorder sums; the leading tokens must agree exactly.
    for a, b in zip(together, alone, strict=True):
        assert a.choices[0].text[:12] == b.choices[0].text[:12]
        assert a.prompt_tokens == b.prompt_tokens


async def test_shared_prefix_is_reused_and_changes_nothing(
    engine: LlamaCppEngine, single: LlamaCppEngine
) -> None:
    await engine.chat(ask(SHARED_SYSTEM, "Where are the maps?"))  # warms the prefix cache
    reused = await engine.chat(ask(SHARED_SYSTEM, "When do you open?"))
    fresh = await single.chat(ask(SHARED_SYSTEM, "When do you open?"))
    assert reused.cached_tokens > 50 and fresh.cached_tokens == 0
    assert reused.choices[0].text[:12] == fresh.choices[0].text[:12]


async def test_short_chats_reuse_the_template_and_system_line(
    engine: LlamaCppEngine, single: LlamaCppEngine
) -> None:
    # Short chats share only the chat template and a one-line system prompt (about 19
    # tokens): still worth taking from the cache, and it must not change the answer.
    system = "You are a helpful assistant."
    first, second = await asyncio.gather(
        engine.chat(ask(system, "Tell me one fact about owls.")),
        engine.chat(ask(system, "Tell me one fact about tea.")))
    assert max(first.cached_tokens, second.cached_tokens) >= 8
    fresh = await single.chat(ask(system, "Tell me one fact about tea."))
    assert fresh.cached_tokens == 0
    assert second.choices[0].text[:12] == fresh.choices[0].text[:12]


async def test_kv_accounting_balances_when_cached_prefixes_are_evicted(
    engine: LlamaCppEngine,
) -> None:
    # Three long system prompts, three questions each, all at once: the 2-entry prefix cache
    # evicts prefixes whose cells running requests still share. Every reserved cell must be
    # given back once they finish (or later admissions would stall or overrun the cache).
    systems = [(f"You answer questions about {topic}. " * 10).strip()
               for topic in ("rivers", "owls", "bread")]
    results = await asyncio.gather(*(
        engine.chat(ask(system, f"Question {n}: what is one fact?"))
        for system in systems for n in range(3)))
    assert all(r.choices[0].text for r in results)
    assert any(r.cached_tokens > 50 for r in results)
    scheduler = engine._scheduler
    assert scheduler.reserved_cells == 0 and not scheduler.active


async def test_stops_and_limits_hold_under_batching(engine: LlamaCppEngine) -> None:
    counting = chat("Count from 1 to 30, separated by commas.", max_tokens=40, temperature=0)
    free = (await engine.chat(counting)).choices[0].text
    cut = free[6:9]
    limited, stopped, _ = await asyncio.gather(
        engine.chat(chat("Write a poem about rain.", max_tokens=7, temperature=0)),
        engine.chat(chat("Count from 1 to 30, separated by commas.", max_tokens=40,
                         temperature=0, stop=[cut])),
        engine.chat(chat("Say hi.", max_tokens=5)),
    )
    assert limited.choices[0].finish_reason == "length" and limited.completion_tokens == 7
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == free[: free.index(cut)]


async def test_realtime_requests_go_before_waiting_batch_work(engine: LlamaCppEngine) -> None:
    from batchd.engines.base import Priority

    backlog = [asyncio.create_task(engine.chat(chat(f"Tell a story number {i}.",
                                                    max_tokens=24), priority=Priority.BATCH))
               for i in range(24)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await engine.chat(chat("Say hi.", max_tokens=2))
    interactive = time.monotonic() - started
    finished_batch = sum(task.done() for task in backlog)
    for task in backlog:
        task.cancel()
    await asyncio.gather(*backlog, return_exceptions=True)
    # It did not wait for the 16 queued batch requests behind the 8 running ones.
    assert finished_batch < 16 and interactive < 10


async def test_an_empty_stop_string_stops_nothing(engine: LlamaCppEngine) -> None:
    free = await engine.chat(chat("Name a colour.", max_tokens=6, temperature=0))
    stopped = await engine.chat(chat("Name a colour.", max_tokens=6, temperature=0,
                                     stop=["", "\u2603"]))
    assert free.choices[0].text and stopped.choices[0].text == free.choices[0].text


@pytest.fixture(scope="module")
def thinker() -> Iterator[LlamaCppEngine]:
    """SmolLM2 taken for a reasoning model: it never writes `</think>`, so every answer is
    thinking cut by max_tokens, which is what the plumbing needs to show (the split itself
    is tested on texts in unit/test_structured_pieces.py)."""
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512, parallel=2, reasoning="deepseek-r1"))
    yield engine
    asyncio.run(engine.aclose())


async def test_a_reasoning_models_thinking_is_apart_and_counted(
        thinker: LlamaCppEngine) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    request = chat("What is 6 times 7? Think first.", max_tokens=12, temperature=0,
                   response_format=schema)
    result = await thinker.chat(request)
    (choice,) = result.choices
    # thinking is not held to the schema (only the answer after `</think>` would be)
    assert choice.reasoning and choice.text == "" and choice.finish_reason == "length"
    assert result.reasoning_tokens == result.completion_tokens == 12
    events = [e async for e in thinker.chat_stream(request)]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.reasoning for d in deltas) == choice.reasoning
    assert not "".join(d.text for d in deltas)
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.reasoning_tokens == 12


async def test_counted_prompt_tokens_are_those_the_answer_reports(
    engine: LlamaCppEngine,
) -> None:
    # What a file's estimate counts is what the model then bills: the same chat template and
    # tokenizer, for chats (with a system prompt and a tool), text completions and both.
    chat = ChatCompletionRequest.model_validate({
        "model": "m", "max_tokens": 1, "messages": [
            {"role": "system", "content": "You label things."},
            {"role": "user", "content": "Label: 'win a prize now' ünïcode"}]})
    answer = await engine.chat(chat)
    assert engine.count_tokens(chat) == answer.prompt_tokens
    text = CompletionRequest.model_validate({"model": "m", "prompt": "Once upon a",
                                             "max_tokens": 1})
    assert engine.count_tokens(text) == (await engine.complete(text)).prompt_tokens
