"""Two tenants at once on the real llama.cpp engine: one tenant's big request must not keep
another's small one waiting. The tests check the order of events (how much of the big
request ran while the small one waited, whether the event loop kept turning), not wall-clock
figures, which depend on the machine; bench/tenants.py reports the latencies, idle and
behind each load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TypeVar

import pytest

from batchd.engines.base import EngineRequestError
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs
from batchd.serving.completions import COMPLETIONS
from batchd.serving.operation import Produced
from tests.support.harness import as_owner

pytestmark = pytest.mark.backend_independent
T = TypeVar("T")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512, parallel=8, pooling="mean",
                                            embedding_max_tokens=256,
                                            embedding_step_tokens=256),
                            serves=frozenset({"chat", "embeddings"}))
    yield engine
    asyncio.run(engine.aclose())


async def stop(task: asyncio.Task[T]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def small_chat() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
         "temperature": 0})


async def test_a_request_of_many_choices_does_not_hold_up_another_tenant(
    engine: LlamaCppEngine,
) -> None:
    # The reported case: 8 prompts x n 16, 48 tokens each, at temperature 1.
    big = CompletionRequest.model_validate(
        {"model": "m", "prompt": [f"Story {i}: once upon a time" for i in range(8)],
         "n": 16, "max_tokens": 48, "temperature": 1})
    hog: asyncio.Task[Produced] = as_owner("a", lambda: COMPLETIONS.run(engine, big, 0, 0))
    scheduler = engine._scheduler
    assert scheduler is not None
    while len(scheduler.active) < 8:  # every slot is the first tenant's
        await asyncio.sleep(0.05)
    preempted = scheduler.preemptions
    generated = sum(len(seq.generated) for seq in scheduler.active)
    small = await as_owner("b", lambda: engine.chat(small_chat()))
    steps = sum(len(seq.generated) for seq in scheduler.active) - generated
    assert small.completion_tokens == 4 and not hog.done()
    assert scheduler.preemptions == preempted + 1  # it took one slot back, no more
    # It ran beside the first tenant's choices at once: while it did, they made a few
    # tokens each (at most 8 wide, a handful of steps), not the rest of their 48.
    print(f"the first tenant's choices made {steps} tokens while the small chat ran")
    assert steps <= 8 * 12
    await stop(hog)


async def test_a_preempted_choice_continues_as_if_it_had_not_been(
    engine: LlamaCppEngine,
) -> None:
    # Greedy choices are deterministic: preempted mid-way (its cells recomputed from the
    # prompt and what it had generated), each must end exactly as it does undisturbed.
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Count from 1 to 30."}],
         "max_tokens": 24, "temperature": 0, "n": 8})
    alone = await as_owner("a", lambda: engine.chat(request))
    scheduler = engine._scheduler
    assert scheduler is not None
    preempted = scheduler.preemptions
    crowded = as_owner("a", lambda: engine.chat(request))
    while len(scheduler.active) < 8 or min(len(s.generated) for s in scheduler.active) < 2:
        await asyncio.sleep(0.02)  # every slot is the first tenant's, mid-way
    await asyncio.gather(*(as_owner(f"other-{i}", lambda: engine.chat(small_chat()))
                           for i in range(3)))
    shared = await crowded
    assert scheduler.preemptions > preempted
    assert [c.text for c in shared.choices] == [c.text for c in alone.choices]
    assert shared.completion_tokens == alone.completion_tokens
    assert scheduler.reserved_cells == 0 and not scheduler.active and not scheduler.waiting


async def test_thousands_of_inputs_do_not_hold_up_another_tenants_embedding(
    engine: LlamaCppEngine,
) -> None:
    embedder = engine._embedder
    assert embedder is not None

    def left_of(owner: str) -> int:
        with embedder._wake:
            return sum(len(queues.get(owner) or ()) for queues in embedder._waiting.values())

    many = EmbeddingInputs(texts=[f"document number {i} about the weather" for i in
                                  range(2048)])
    hog = as_owner("a", lambda: engine.embed(many))
    while not left_of("a"):  # tokenized and queued
        await asyncio.sleep(0.02)
    before = left_of("a")
    one = await as_owner("b", lambda: engine.embed(EmbeddingInputs(texts=["a question"])))
    ran = before - left_of("a")
    print(f"{ran} of the first tenant's inputs were embedded while the second's one waited")
    assert len(one.vectors) == 1 and not hog.done()
    # Once tokenized, it rode in the next step (256 tokens: about 28 of these inputs; the
    # step under way and the one its tokenizing overlapped came first), not behind 2,048.
    assert ran <= 4 * 256 // 9
    await stop(hog)


async def test_one_tenants_huge_prompts_are_prepared_off_the_event_loop_one_at_a_time(
    engine: LlamaCppEngine,
) -> None:
    # Tokenizing a megabyte takes a while: one tenant's three run one after another on a
    # preparation thread while the event loop keeps turning, and another tenant's small
    # prompt is prepared on the other thread meanwhile.
    huge = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "word " * 200_000}],
         "max_tokens": 4})
    started = time.monotonic()
    with pytest.raises(EngineRequestError):
        engine._prompt(huge)  # what one costs on the event loop, as it used to run
    inline = time.monotonic() - started
    floods = [as_owner("a", lambda: engine.chat(huge)) for _ in range(3)]
    small = as_owner("b", lambda: engine.chat(small_chat()))
    gap, last = 0.0, time.monotonic()
    while not small.done():
        await asyncio.sleep(0.005)
        now = time.monotonic()
        gap, last = max(gap, now - last), now
    await small
    print(f"one 1 MB prompt takes {inline:.2f} s to prepare; the loop's longest pause "
          f"while three were prepared was {gap:.3f} s")
    assert sum(task.done() for task in floods) < 3  # the small one did not wait for all
    assert gap < inline / 2
    results = await asyncio.gather(*floods, return_exceptions=True)
    assert all(getattr(r, "code", None) == "context_length_exceeded" for r in results)
