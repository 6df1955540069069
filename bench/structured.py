"""Structured outputs on the llama.cpp engine: what a per-line JSON schema costs.

1. End to end on batchd's engine, the same prompts twice, one after the other in this process
   with the same threads, context, slots and sampling (temperature 0, max_tokens as given):
   without a schema, and with one of four different schemas per prompt (all in the same
   decode steps). Prints generated tokens/s for both and the ratio (target: >= 0.8).
2. The constraint's own cost per token, on the tokens the constrained run generated, replayed
   through each candidate with the same schemas: llguidance (batchd's choice: the mask of every
   sequence of a step at once, then the token consumed) and llama.cpp's own grammar sampler
   (`llama_sampler_init_grammar` with llama-cpp-python's JSON-schema-to-GBNF converter: the
   grammar applied to the whole vocabulary, then the token accepted).

    .venv/bin/python bench/structured.py [--prompts 48] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.engines.constraints import COMPACT, Masks
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.openai.chat import ChatCompletionRequest

THREADS = os.cpu_count() or 1
N_CTX, PARALLEL = 2048, 16

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
                                      "confidence": {"type": "number"}},
     "required": ["label", "confidence"], "additionalProperties": False},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 32},
                                      "age": {"type": "integer"},
                                      "email": {"type": ["string", "null"]}},
     "required": ["name", "age", "email"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 5,
                                               "items": {"type": "string", "maxLength": 16}},
                                      "summary": {"type": "string", "maxLength": 120}},
     "required": ["tags", "summary"], "additionalProperties": False},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                      "where": {"type": "object", "properties": {
                                          "lat": {"type": "number"},
                                          "lon": {"type": "number"}},
                                          "required": ["lat", "lon"],
                                          "additionalProperties": False},
                                      "population": {"type": "integer"}},
     "required": ["city", "where", "population"], "additionalProperties": False},
]
TOPICS = ("a review of a cafe", "a person who runs a bakery", "a news story about a storm",
          "a city by the sea", "a film about robots", "a hiking trip", "a new phone",
          "a football match")


def requests(n: int, max_tokens: int, constrained: bool) -> list[ChatCompletionRequest]:
    out = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": "m", "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} "
                                                     f"(item {i}) as JSON."}]}
        if constrained:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": f"s{i % 4}", "schema": SCHEMAS[i % 4], "strict": True}}
        out.append(ChatCompletionRequest.model_validate(body))
    return out


async def run(engine: LlamaCppEngine, batch: list[ChatCompletionRequest]
              ) -> tuple[float, int, list[str]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.chat(r) for r in batch))
    elapsed = time.perf_counter() - started
    return (elapsed, sum(r.completion_tokens for r in results),
            [r.choices[0].text for r in results])


def llguidance_cost(engine: LlamaCppEngine, answers: list[tuple[int, str]]) -> float:
    """Seconds per token: all sequences' masks per step together, then each token consumed."""
    from batchd.engines.constraints import json_constraint

    grammars = engine._grammars
    tokenizer = grammars.tokenizer()
    tracks = [(grammars.matcher(json_constraint(SCHEMAS[i % 4], "s")),
               tokenizer.tokenize_str(text)) for i, text in answers]
    masks = Masks(engine._n_vocab, len(tracks))
    logits = [(ctypes.c_float * engine._n_vocab)() for _ in tracks]
    started, tokens = time.perf_counter(), 0
    step = 0
    while True:
        live = [(k, m, toks) for k, (m, toks) in enumerate(tracks) if step < len(toks)]
        if not live:
            break
        masks.apply([(m, logits[k]) for k, m, _ in live])
        for _, m, toks in live:
            assert m.consume_token(toks[step]), m.get_error()
            tokens += 1
        step += 1
    return (time.perf_counter() - started) / max(tokens, 1)


def gbnf_cost(engine: LlamaCppEngine, answers: list[tuple[int, str]]) -> float:
    """Seconds per token for llama.cpp's grammar sampler over the whole vocabulary."""
    import llama_cpp as lib
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    vocab = engine._scheduler.vocab if engine._scheduler else None
    n_vocab = engine._n_vocab
    data = (lib.llama_token_data * n_vocab)()
    spent, tokens = 0.0, 0
    for i, text in answers:
        gbnf = json_schema_to_gbnf(json.dumps(SCHEMAS[i % 4]))
        sampler = lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        for token in engine._llama.tokenize(text.encode(), add_bos=False, special=False):
            for t in range(n_vocab):
                data[t].id, data[t].logit, data[t].p = t, 0.0, 0.0
            array = lib.llama_token_data_array(data=data, size=n_vocab, selected=-1,
                                               sorted=False)
            started = time.perf_counter()
            lib.llama_sampler_apply(sampler, ctypes.byref(array))
            lib.llama_sampler_accept(sampler, token)
            spent += time.perf_counter() - started
            tokens += 1
        lib.llama_sampler_free(sampler)
    return spent / max(tokens, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=N_CTX, parallel=PARALLEL, n_threads=THREADS))
    print(f"SmolLM2-135M-Instruct Q4_1, {THREADS} threads, n_ctx {N_CTX}, {PARALLEL} slots, "
          f"{args.prompts} prompts, max_tokens {args.max_tokens}, temperature 0, "
          f"JSON {COMPACT}")
    await run(engine, requests(PARALLEL, 8, False))  # warm-up: weights paged in, threads up
    await run(engine, requests(4, 8, True))  # warm-up: the vocabulary's llguidance tokenizer
    free_s, free_tokens, _ = await run(engine, requests(args.prompts, args.max_tokens, False))
    json_s, json_tokens, texts = await run(engine, requests(args.prompts, args.max_tokens,
                                                            True))
    free_rate, json_rate = free_tokens / free_s, json_tokens / json_s
    print(f"unconstrained: {free_tokens} tokens in {free_s:.2f} s = {free_rate:.1f} tokens/s")
    print(f"4 schemas:     {json_tokens} tokens in {json_s:.2f} s = {json_rate:.1f} tokens/s")
    print(f"ratio constrained/unconstrained: {json_rate / free_rate:.2f} (target >= 0.80)")
    answers = [(i, text) for i, text in enumerate(texts)]
    llg = llguidance_cost(engine, answers)
    gbnf = gbnf_cost(engine, answers)
    print(f"constraint cost per token, same schemas and tokens: llguidance "
          f"{llg * 1e6:.0f} us (masks of all {len(answers)} sequences per step together), "
          f"llama.cpp grammar sampler {gbnf * 1e6:.0f} us ({gbnf / llg:.1f}x)")
    print(f"wall time per generated token (unconstrained, {PARALLEL} slots): "
          f"{free_s / free_tokens * 1e6:.0f} us")
    await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
