"""The real llama.cpp engine in embedding mode, and text completions, on the shipped SmolLM2
model."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from batchd.engines.base import EngineFailure, EngineRequestError, Priority
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs
from batchd.serving.completions import COMPLETIONS
from batchd.serving.responses import RESPONSES

pytestmark = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512, pooling="mean", embedding_max_tokens=256,
                                            embedding_step_tokens=64),
                            serves=frozenset({"chat", "embeddings"}))
    yield engine
    asyncio.run(engine.aclose())


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_unit_length_and_do_not_depend_on_their_step_mates(
        engine: LlamaCppEngine) -> None:
    texts = ["a quiet river at dawn", "stock prices fell sharply", "the owl hooted"]
    alone = [(await engine.embed(EmbeddingInputs(texts=[t]))).vectors[0] for t in texts]
    # Many concurrent requests: their inputs share decode steps.
    crowd = await asyncio.gather(*(
        engine.embed(EmbeddingInputs(texts=[f"filler sentence number {i}", texts[i % 3]]),
                     priority=Priority.BATCH) for i in range(24)))
    for i, result in enumerate(crowd):
        assert len(result.vectors) == 2
        assert cosine(result.vectors[1], alone[i % 3]) > 0.9999
    assert all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-5) for v in alone)
    assert cosine(alone[0], alone[1]) < 0.9999


async def test_token_inputs_match_their_text(engine: LlamaCppEngine) -> None:
    text = "hello there"
    ids = engine._embedder.tokens_of(EmbeddingInputs(texts=[text]))[0]  # type: ignore[union-attr]
    by_text = await engine.embed(EmbeddingInputs(texts=[text]))
    by_ids = await engine.embed(EmbeddingInputs(tokens=[ids]))
    assert cosine(by_text.vectors[0], by_ids.vectors[0]) > 0.9999
    assert by_text.prompt_tokens == by_ids.prompt_tokens == len(ids)


async def test_what_cannot_be_embedded_is_a_request_error_naming_it(
        engine: LlamaCppEngine) -> None:
    with pytest.raises(EngineRequestError) as long:
        await engine.embed(EmbeddingInputs(texts=["short", "word " * 400]))
    assert long.value.param == "input[1]" and long.value.code == "context_length_exceeded"
    with pytest.raises(EngineRequestError) as vocab:
        await engine.embed(EmbeddingInputs(tokens=[[1, 10**7]]))
    assert vocab.value.param == "input[0]"
    with pytest.raises(EngineRequestError) as dims:
        await engine.embed(EmbeddingInputs(texts=["x"], dimensions=64))
    assert dims.value.param == "dimensions"


async def test_matryoshka_models_may_be_asked_for_fewer_dimensions() -> None:
    engine = LlamaCppEngine(LlamaCppOptions(pooling="cls", matryoshka=True),
                            serves=frozenset({"embeddings"}))
    try:
        result = await engine.embed(EmbeddingInputs(texts=["x"], dimensions=64))
        assert len(result.vectors[0]) == 576  # cut (and normalised again) by the endpoint
        with pytest.raises(EngineRequestError):
            await engine.embed(EmbeddingInputs(texts=["x"], dimensions=577))
        with pytest.raises(EngineRequestError):  # this model serves no chat
            await engine.complete(CompletionRequest.model_validate(
                {"model": "m", "prompt": "x"}))
    finally:
        await engine.aclose()


def test_a_chat_model_needs_a_pooling_to_embed() -> None:
    with pytest.raises(EngineFailure, match="pooling: mean"):
        LlamaCppEngine(LlamaCppOptions(), serves=frozenset({"embeddings"}))


async def test_text_completions_run_the_raw_prompt(engine: LlamaCppEngine) -> None:
    request = CompletionRequest.model_validate(
        {"model": "m", "prompt": "1, 2, 3, 4,", "max_tokens": 4, "temperature": 0,
         "logprobs": 1})
    result = await engine.complete(request)
    choice = result.choices[0]
    assert result.completion_tokens == 4 and choice.finish_reason == "length"
    assert choice.text.strip().startswith("5")  # no chat template: it just continues
    assert choice.logprobs is not None and len(choice.logprobs["content"]) == 4
    zero = await engine.complete(request.model_copy(update={"max_tokens": 0}))
    assert zero.choices[0].text == "" and zero.prompt_tokens == result.prompt_tokens
    ids = await engine.complete(request.model_copy(update={"prompt": [1, 2, 3]}))
    assert ids.prompt_tokens == 3 + 0 and ids.completion_tokens == 4
    with pytest.raises(EngineRequestError) as vocab:
        await engine.complete(request.model_copy(update={"prompt": [10**7]}))
    assert vocab.value.param == "prompt"


async def test_engine_refusals_keep_their_400_and_their_callers_names(
        engine: LlamaCppEngine) -> None:
    several = COMPLETIONS.parse({"model": "m", "prompt": [[5, 6], [10**7]], "max_tokens": 2})
    with pytest.raises(EngineRequestError) as vocab:  # not an ExceptionGroup, not a 500
        await COMPLETIONS.run(engine, several, 0, Priority.REALTIME)
    assert vocab.value.param == "prompt"
    long = RESPONSES.parse({"model": "m", "input": "hi", "max_output_tokens": 100_000})
    with pytest.raises(EngineRequestError) as limit:
        await RESPONSES.run(engine, long, 0, Priority.REALTIME)
    assert limit.value.param == "max_output_tokens" and "max_output_tokens" in limit.value.message
    huge = RESPONSES.parse({"model": "m", "input": "word " * 600})
    with pytest.raises(EngineRequestError) as context:
        await RESPONSES.run(engine, huge, 0, Priority.REALTIME)
    assert context.value.param == "input"


async def test_closing_the_embedder_fails_what_waits_instead_of_hanging() -> None:
    engine = LlamaCppEngine(LlamaCppOptions(pooling="mean", embedding_step_tokens=16),
                            serves=frozenset({"embeddings"}))
    calls = [asyncio.ensure_future(engine.embed(EmbeddingInputs(texts=[f"text {i} " * 4])))
             for i in range(40)]
    await asyncio.sleep(0.05)
    await engine.aclose()
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed and all(isinstance(o, EngineFailure) for o in failed)
