"""What batching can buy on this machine: the cost of one llama.cpp decode step per token, by
how many sequences it carries, on the default model, with the engine's context settings.

bench/throughput.py compares batchd with a one-request-at-a-time loop. That loop decodes one
token a step, which on a CPU is bound by reading the weights; a batched step is bound by
arithmetic instead. The ratio of the two per-token costs is the most any scheduler can gain
over the loop on generated tokens, before the prompts (which the loop also evaluates in
batches) are counted. This prints that ceiling for a short context and for the 500-token
shared system prompt of `--workload shared`.

    .venv/bin/python bench/decode_ceiling.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchd.engines.llamacpp_options import default_model_path

THREADS = os.cpu_count() or 1
WIDTHS = (1, 4, 8, 16, 24, 32)
STEPS = 30  # measured decode steps per width (after 10 unmeasured ones)


def per_token_ms(llama: Any, width: int, context: int) -> float:
    """Median milliseconds per token of steps carrying `width` sequences that each have
    `context` tokens behind them (shared, as a common system prompt is)."""
    import llama_cpp as lib

    params = lib.llama_context_default_params()
    params.n_ctx = 16_384
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = max(WIDTHS)
    params.kv_unified = True  # as the engine's scheduler runs it
    params.n_threads = params.n_threads_batch = THREADS
    ctx = lib.llama_init_from_model(llama.model, params)
    batch = lib.llama_batch_init(512, 0, 1)
    memory = lib.llama_get_memory(ctx)

    def step(items: list[tuple[int, int, int]]) -> float:
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, True
        batch.n_tokens = len(items)
        started = time.perf_counter()
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    try:
        for start in range(0, context, 256):
            step([(100 + p % 64, p, 0) for p in range(start, min(context, start + 256))])
        for seq in range(1, width):
            lib.llama_memory_seq_cp(memory, 0, seq, 0, context)
        times = [step([(200 + k, context + k, seq) for seq in range(width)])
                 for k in range(STEPS + 10)][10:]
        return statistics.median(times) * 1000 / width
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)


def main() -> None:
    from llama_cpp import Llama

    llama = Llama(model_path=str(default_model_path()), n_ctx=256, n_batch=32, verbose=False)
    print(f"SmolLM2-135M Q4_1, {THREADS} threads, one unified KV cache (as batchd's engine); "
          f"median of {STEPS} decode steps per width")
    for context, name in ((30, "short chat context (30 tokens)"),
                          (500, "shared 500-token system prompt")):
        single = per_token_ms(llama, 1, context)
        best = single
        print(f"{name}:")
        for width in WIDTHS:
            ms = single if width == 1 else per_token_ms(llama, width, context)
            best = min(best, ms)
            print(f"  {width:2d} sequences a step: {ms:5.2f} ms a token, "
                  f"{1000 / ms:6.1f} tok/s, {single / ms:.2f}x one at a time")
        print(f"  ceiling of batched over one-at-a-time decoding: {single / best:.2f}x")
    llama.close()


if __name__ == "__main__":
    main()
