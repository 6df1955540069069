"""Generation throughput on the default model, side by side on the same seeded prompts:

1. the naive loop: llama-cpp-python's `create_chat_completion`, one request after another;
2. batchd's llama.cpp engine driven directly (continuous batching, prefix reuse);
3. batchd end to end: upload → batch → completed, through the real server;
4. with LLAMA_SERVER=/path/to/llama-server, that server at its best --parallel N (of 4, 8,
   16 and 32, each sent N requests at a time; or --llama-parallel N), in every round next to
   batchd end to end, in turn first.

Prints each contender's settings, generated tokens/s and requests/s, the ratios of each round,
and with --rounds the medians of the rates and of the rounds' ratios.

    .venv/bin/python bench/throughput.py --workload short|shared [--requests 64] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.ports import free_port, wait_for_http

from batchd.engines.base import Priority
from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions, default_model_path
from batchd.openai.chat import ChatCompletionRequest
from bench.common import bench_server, run_batch

MAX_TOKENS = 64
TOPICS = ["rivers", "owls", "bread", "trains", "glaciers", "violins", "tides", "bees",
          "comets", "maps", "tea", "bridges", "moss", "kites", "salt", "lanterns"]
SHARED_SYSTEM = " ".join(
    f"Rule {i}: answer politely, stay on topic, prefer short sentences, cite no sources, "
    f"and never mention these rules." for i in range(1, 21))


@dataclass
class Figures:
    name: str
    seconds: float
    tokens: int
    requests: int

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def line(self, baseline: Figures | None) -> str:
        ratio = f"  {self.rate / baseline.rate:.2f}x" if baseline else ""
        return (f"{self.name:<34} {self.tokens / self.seconds:7.1f} gen tok/s "
                f"{self.requests / self.seconds:6.2f} req/s ({self.tokens} tokens, "
                f"{self.seconds:.1f} s){ratio}")


def workload(kind: str, n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    system = "You are a helpful assistant." if kind == "short" else SHARED_SYSTEM
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"Tell me one fact about {rng.choice(TOPICS)} "
                                         f"(question {i})."}] for i in range(n)]


WARM_UP = [{"role": "user", "content": "Say hi."}]
"""One request each contender answers before its clock starts."""
THREADS = os.cpu_count() or 1
"""Every contender decodes with as many threads as batchd's engine uses by default (all
cores); llama-cpp-python's own default is half of them."""


def naive_loop(chats: list[list[dict[str, str]]]) -> Figures:
    from llama_cpp import Llama

    llama = Llama(model_path=str(default_model_path()), n_ctx=2048, verbose=False,
                  n_threads=THREADS, n_threads_batch=THREADS)
    llama.create_chat_completion(messages=WARM_UP, max_tokens=8)  # type: ignore[arg-type]
    tokens = 0
    started = time.perf_counter()
    for messages in chats:
        out: Any = llama.create_chat_completion(messages=messages,  # type: ignore[arg-type]
                                                max_tokens=MAX_TOKENS, temperature=0)
        tokens += out["usage"]["completion_tokens"]
    figures = Figures("naive llama-cpp-python loop", time.perf_counter() - started, tokens,
                      len(chats))
    llama.close()
    return figures


def engine_direct(chats: list[list[dict[str, str]]], parallel: int) -> Figures:
    async def run() -> Figures:
        # Configured and called exactly as batchd's worker does (batch priority, default
        # real-time slot kept free), so the utilisation ratio compares like with like.
        engine = LlamaCppEngine(LlamaCppOptions(n_ctx=2048, parallel=parallel,
                                                n_threads=THREADS))
        requests = [ChatCompletionRequest.model_validate(
            {"model": "m", "messages": m, "max_tokens": MAX_TOKENS, "temperature": 0})
            for m in chats]
        await engine.chat(ChatCompletionRequest.model_validate(
            {"model": "m", "messages": WARM_UP, "max_tokens": 8}), priority=Priority.BATCH)
        started = time.perf_counter()
        results = await asyncio.gather(*(engine.chat(r, priority=Priority.BATCH)
                                         for r in requests))
        seconds = time.perf_counter() - started
        await engine.aclose()
        return Figures(f"batchd engine direct (parallel {parallel})", seconds,
                       sum(r.completion_tokens for r in results), len(chats))

    return asyncio.run(run())


def batchd_end_to_end(chats: list[list[dict[str, str]]], parallel: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(
            "models:\n  - id: SmolLM2-135M-Instruct\n    engine: llamacpp\n"
            f"    n_ctx: 2048\n    parallel: {parallel}\n    n_threads: {THREADS}\n")
        with bench_server(root, models=root / "models.yaml",
                          BATCHD_CHUNK_LINES="64") as server:
            client = OpenAI(base_url=server.base_url, api_key=server.api_key)
            client.chat.completions.create(model="SmolLM2-135M-Instruct",
                                           messages=WARM_UP, max_tokens=8)  # type: ignore[arg-type]
            path = root / "input.jsonl"
            path.write_text("".join(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "SmolLM2-135M-Instruct", "messages": m,
                         "max_tokens": MAX_TOKENS, "temperature": 0}}) + "\n"
                for i, m in enumerate(chats)))
            batch, seconds = run_batch(client, path)
            assert batch.usage is not None
            return Figures("batchd end to end (upload→completed)", seconds,
                           batch.usage.output_tokens, len(chats))


def llama_server(binary: str, chats: list[list[dict[str, str]]], slots: int) -> Figures:
    port = free_port()
    process = subprocess.Popen([binary, "-m", str(default_model_path()), "--port", str(port),
                                "--parallel", str(slots), "-c", str(2048 * slots),
                                "--threads", str(THREADS), "--threads-batch", str(THREADS)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", process=process)

        async def run() -> Figures:
            gate = asyncio.Semaphore(slots)
            async with httpx.AsyncClient(base_url=base, timeout=600) as client:
                await client.post("/v1/chat/completions",
                                  json={"messages": WARM_UP, "max_tokens": 8})

                async def one(messages: list[dict[str, str]]) -> int:
                    async with gate:
                        r = await client.post("/v1/chat/completions", json={
                            "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0})
                        return int(r.json()["usage"]["completion_tokens"])
                started = time.perf_counter()
                tokens = sum(await asyncio.gather(*(one(m) for m in chats)))
                return Figures(f"llama-server --parallel {slots} (conc. {slots})",
                               time.perf_counter() - started, tokens, len(chats))

        return asyncio.run(run())
    finally:
        process.terminate()
        process.wait()


def isolated(measure: Callable[..., Figures], *args: Any) -> Figures:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


LLAMA_SWEEP = (4, 8, 16, 32)


def settings_lines(parallel: int, llama_slots: int | None) -> list[str]:
    """What each contender runs with, so that a reader can check they are alike."""
    warm = f"one warm-up request ({WARM_UP[0]['content']!r}, 8 tokens) before its clock starts"
    lines = [
        f"naive loop: llama-cpp-python, {THREADS} threads (decode and batch), n_ctx 2048, "
        f"one request at a time, {warm}",
        f"batchd engine direct: {THREADS} threads, n_ctx 2048 per request, parallel "
        f"{parallel} (1 real-time slot kept free), batch priority, {warm}",
        f"batchd end to end: the same engine settings in the real server (chunks of 64 "
        f"lines), {warm} (a real-time chat)",
    ]
    if llama_slots is not None:
        lines.append(f"llama-server: {THREADS} threads (decode and batch), --parallel "
                     f"{llama_slots}, -c {2048 * llama_slots} (2048 per slot), {llama_slots} "
                     f"requests in flight, {warm}")
    return lines


def best_llama_parallel(binary: str, chats: list[list[dict[str, str]]],
                        naive: Figures | None) -> int:
    """llama-server's best --parallel on this workload (one run of each, before the rounds:
    it only picks the width the rounds then measure alternately with batchd)."""
    runs = []
    for slots in LLAMA_SWEEP:
        runs.append((slots, llama_server(binary, chats, slots)))
        print("  sweep: " + runs[-1][1].line(naive), flush=True)
    slots, best = max(runs, key=lambda run: run[1].rate)
    print(f"  llama-server's best --parallel: {slots} ({best.rate:.1f} gen tok/s)")
    return slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["short", "shared"], default="short")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--llama-parallel", type=int, default=None,
                        help="llama-server's --parallel (default: the best of "
                             f"{', '.join(map(str, LLAMA_SWEEP))}, found by one run of each "
                             "before the rounds)")
    args = parser.parse_args()
    chats = workload(args.workload, args.requests, args.seed)
    binary = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    print(f"workload {args.workload}: {args.requests} chats, {MAX_TOKENS} max tokens, "
          f"temperature 0, {os.cpu_count()} CPUs")
    # Each in-process measurement runs in a process of its own that then exits: llama.cpp's
    # OpenMP worker threads outlive a closed model and keep spinning, which slowed every later
    # measurement on this 2-core machine by about a quarter.
    # The naive loop decodes one token a step, bound by memory bandwidth, which on a shared VM
    # drifts by up to a fifth within minutes; batched steps are bound by arithmetic and hold
    # steady. With --rounds N the contenders run alternately N times and the median ratio of
    # each round (measured minutes apart at most) is reported. batchd end to end and
    # llama-server run next to each other in every round, in turn first (ABBA), so that the
    # VM's drift falls on both alike.
    slots = args.llama_parallel
    if binary and slots is None:
        slots = best_llama_parallel(binary, chats, None)
    for line in settings_lines(args.parallel, slots if binary else None):
        print(f"  {line}")
    rates: dict[str, list[float]] = {"naive loop": [], "engine direct": [], "end to end": [],
                                     "llama-server": []}
    ratios: dict[str, list[float]] = {"engine direct ÷ naive loop": [],
                                      "end to end ÷ naive loop": [],
                                      "end to end ÷ llama-server": []}
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_no}:")
        naive = isolated(naive_loop, chats)
        print(naive.line(None), flush=True)
        direct = isolated(engine_direct, chats, args.parallel)
        print(direct.line(naive), flush=True)
        e2e = server = None
        # ABBA: batchd first in odd rounds, llama-server first in even ones.
        order = ["batchd", "llama-server"] if round_no % 2 else ["llama-server", "batchd"]
        for contender in order:
            if contender == "batchd":
                e2e = batchd_end_to_end(chats, args.parallel)
                print(e2e.line(naive), flush=True)
            elif binary and slots is not None:
                server = llama_server(binary, chats, slots)
                print(server.line(naive), flush=True)
        assert e2e is not None
        print(f"engine utilisation (end to end ÷ direct): {e2e.rate / direct.rate:.2f}")
        rates["naive loop"].append(naive.rate)
        rates["engine direct"].append(direct.rate)
        rates["end to end"].append(e2e.rate)
        ratios["engine direct ÷ naive loop"].append(direct.rate / naive.rate)
        ratios["end to end ÷ naive loop"].append(e2e.rate / naive.rate)
        if server is not None:
            rates["llama-server"].append(server.rate)
            ratios["end to end ÷ llama-server"].append(e2e.rate / server.rate)
            print(f"batchd end to end ÷ llama-server --parallel {slots}: "
                  f"{e2e.rate / server.rate:.2f}")
    if not binary:
        print("llama-server: not run (set LLAMA_SERVER to a llama-server binary)")
    print(f"medians of {args.rounds} round(s):")
    for name, values in rates.items():
        if values:
            print(f"  {name:<14} {statistics.median(values):7.1f} gen tok/s (each: "
                  f"{', '.join(f'{v:.1f}' for v in values)})")
    for name, values in ratios.items():
        if values:
            print(f"  batchd {name}: {statistics.median(values):.2f}x, the median of the "
                  f"rounds' ratios (each: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
