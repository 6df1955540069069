"""Embedding throughput on the default model's GGUF (mean pooling), side by side on the same
seeded documents, every contender with the same threads, context and batch size:

1. the naive loop: llama-cpp-python's `Llama.embed(text)`, one document after another;
2. llama-cpp-python's own list call, `Llama.embed(documents)` (one process, one call), with
   n_batch 2048 and with batchd's step size (256) too, so that packing is compared fairly;
3. batchd's llama.cpp engine driven directly: one `embed()` per document, all at once, as a
   batch's lanes send them (its thread packs them into shared decode steps);
4. batchd end to end: upload → `/v1/embeddings` batch → completed, through the real server.

Prints documents/s and tokens/s for each, and the ratios to the naive loop.

    .venv/bin/python bench/embeddings.py [--documents 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.engines.base import Priority
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions, default_model_path
from batchd.openai.embeddings import EmbeddingInputs
from bench.common import bench_server, run_batch

THREADS = os.cpu_count() or 1
BATCH_TOKENS = 2048  # n_ctx (and, but where said, n_batch = n_ubatch) for every contender
STEP_TOKENS = 256  # batchd's default embedding_step_tokens
WORDS = ("river owl bread train glacier violin tide bee comet map tea bridge moss kite salt "
         "lantern harbour meadow copper thunder orchard canyon ember willow").split()
MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Figures:
    name: str
    seconds: float
    documents: int
    tokens: int

    def line(self, baseline: Figures | None) -> str:
        rate = self.documents / self.seconds
        ratio = f"  {rate / (baseline.documents / baseline.seconds):.2f}x" if baseline else ""
        return (f"{self.name:<40} {self.documents / self.seconds:7.1f} docs/s "
                f"{self.tokens / self.seconds:8.1f} tok/s ({self.documents} docs, "
                f"{self.seconds:.1f} s){ratio}")


def documents(n: int, seed: int) -> list[str]:
    """Sentences of 6 to 40 words, as search-index chunks or labelling items run."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 40))) + "."
            for _ in range(n)]


def _llama(n_batch: int = BATCH_TOKENS) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(default_model_path()), embedding=True, n_ctx=BATCH_TOKENS,
                 n_batch=n_batch, n_ubatch=n_batch, pooling_type=1,
                 n_threads=THREADS, n_threads_batch=THREADS, verbose=False)


def naive_loop(docs: list[str]) -> Figures:
    llama = _llama()
    llama.embed("warm up")
    started = time.perf_counter()
    tokens = 0
    for doc in docs:
        _, count = llama.embed(doc, return_count=True)
        tokens += count
    figures = Figures("naive loop: Llama.embed(text) each", time.perf_counter() - started,
                      len(docs), tokens)
    llama.close()
    return figures


def list_call(docs: list[str], n_batch: int) -> Figures:
    llama = _llama(n_batch)
    llama.embed("warm up")
    started = time.perf_counter()
    _, tokens = llama.embed(docs, return_count=True)
    figures = Figures(f"Llama.embed(list), n_batch {n_batch}", time.perf_counter() - started,
                      len(docs), tokens)
    llama.close()
    return figures


def engine_direct(docs: list[str]) -> Figures:
    async def run() -> Figures:
        engine = LlamaCppEngine(LlamaCppOptions(pooling="mean", n_threads=THREADS,
                                                embedding_max_tokens=BATCH_TOKENS),
                                serves=frozenset({"embeddings"}))
        await engine.embed(EmbeddingInputs(texts=["warm up"]))
        started = time.perf_counter()
        results = await asyncio.gather(*(
            engine.embed(EmbeddingInputs(texts=[d]), priority=Priority.BATCH) for d in docs))
        seconds = time.perf_counter() - started
        await engine.aclose()
        return Figures("batchd engine direct (one call a doc)", seconds, len(docs),
                       sum(r.prompt_tokens for r in results))

    return asyncio.run(run())


def batchd_end_to_end(docs: list[str]) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(
            f"models:\n  - id: {MODEL}\n    engine: llamacpp\n    serves: [embeddings]\n"
            f"    pooling: mean\n    n_threads: {THREADS}\n"
            f"    embedding_max_tokens: {BATCH_TOKENS}\n")
        with bench_server(root, models=root / "models.yaml",
                          BATCHD_CHUNK_LINES="256") as server:
            client = OpenAI(base_url=server.base_url, api_key=server.api_key)
            client.embeddings.create(model=MODEL, input="warm up")
            path = root / "input.jsonl"
            path.write_text("".join(json.dumps({
                "custom_id": f"d{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": MODEL, "input": d}}) + "\n" for i, d in enumerate(docs)))
            batch, seconds = run_batch(client, path, endpoint="/v1/embeddings")
            assert batch.usage is not None
            return Figures("batchd end to end (upload→completed)", seconds, len(docs),
                           batch.usage.input_tokens)


def isolated(measure: Callable[..., Figures], *args: Any) -> Figures:
    """In a process of its own that then exits (llama.cpp's threads outlive a closed model)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    docs = documents(args.documents, args.seed)
    print(f"{args.documents} documents of 6-40 words, {MODEL} GGUF with mean pooling, "
          f"{os.cpu_count()} CPUs; every contender: {THREADS} threads, n_ctx = n_batch = "
          f"n_ubatch = {BATCH_TOKENS}, warmed up by one input before its clock starts; "
          f"batchd packs {STEP_TOKENS} tokens a step (its default)")
    naive = isolated(naive_loop, docs)
    print(naive.line(None), flush=True)
    for n_batch in (BATCH_TOKENS, STEP_TOKENS):
        print(isolated(list_call, docs, n_batch).line(naive), flush=True)
    print(isolated(engine_direct, docs).line(naive), flush=True)
    print(batchd_end_to_end(docs).line(naive), flush=True)


if __name__ == "__main__":
    main()
