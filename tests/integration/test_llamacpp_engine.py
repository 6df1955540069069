"""The real llama.cpp engine on the shipped SmolLM2 model (short generations only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from batchd.chat import ChatCompletionRequest
from batchd.engines.base import Delta, EngineRequestError, Usage
from batchd.engines.llamacpp import LlamaCppEngine, LlamaCppOptions, default_model_path


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


async def test_logprobs_without_logits_all_is_a_clear_400(engine: LlamaCppEngine) -> None:
    with pytest.raises(EngineRequestError) as caught:
        await engine.chat(chat("hi", max_tokens=2, logprobs=True))
    assert caught.value.param == "logprobs"


async def test_cancel_stops_generation_promptly(engine: LlamaCppEngine) -> None:
    task = asyncio.create_task(engine.chat(chat("Count from 1 to 1000, one number per line.",
                                                temperature=0, max_tokens=400)))
    await asyncio.sleep(0.3)
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
