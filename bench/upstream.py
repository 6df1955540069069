"""Upstream benchmark: how fully batchd keeps OpenAI-compatible servers busy.

A simulated GPU inference server runs inside this script: N slots, a fixed service time per
request, and a FIFO queue beyond N (as a saturated vLLM does). A batch goes through the real
batchd server (`engine: upstream`, default settings: the adaptive limit starts at 128) and the
script prints utilisation = ideal time (requests / N * service time) / the time the server was
busy (first request in to last answer out) beside batchd's CPU per request (user + system of
its process), for N = 16, 128, 512 and 2,048 and for two servers of different sizes (where the
larger should get proportionally more of the work), for a fleet of four servers of 768 slots
behind one model (`fleet`: 3,072 requests at once, more than a worker's usual chunks hold;
target ≥ 0.85), and the CPU of a plain asyncio client on the same server as the floor; and
(`polls`) an idle worker's polls backing off beside polls
every 0.5 s throughout, idle and at 128 slots. Targets: ≥ 0.9 at 512 slots, ≤ 0.5 ms of
batchd CPU a request, ≥ 0.8 at every N up to 512 (2,048 is capped by `max_concurrency`
1,024). With `--llama` it also compares batchd against driving a real `llama_cpp.server` on
the default model directly at its best concurrency (target ≥ 0.95).

Each size also runs on the commit issue #28 measured (`--against`, from a `git worktree` of
this checkout), alternated with this code on the same simulated server: the ratio of their CPU
a request depends far less on the machine's speed, which drifts threefold between the machines
these figures come from, than either figure does. The target, 0.5 ms against the 3.25 ms
that commit spent at 512 slots on the machine the issue was filed on, is a ratio of 0.15.

    .venv/bin/python bench/upstream.py [--only 16,128,512,pair,fleet,polls] [--repeat 3] [--llama]
        [--against ad3ba12 | --against none]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.ports import free_port
from tests.support.server import start_llama_cpp_server

from batchd.engines.upstream import UpstreamOptions
from batchd.settings import Settings
from bench.common import bench_server, event_loop_said, pinned_checkout, pinned_env

_ANSWER = json.dumps({
    "id": "chatcmpl-sim", "object": "chat.completion", "created": 0, "model": "gpu",
    "choices": [{"index": 0, "finish_reason": "length",
                 "message": {"role": "assistant", "content": "x " * 16}}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}}).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_ANSWER))]


class _Sim:
    """The simulated server, a bare ASGI app (it shares this machine's cores with batchd, so
    it does as little as it can): N slots, `service` seconds each, a FIFO queue beyond."""

    def __init__(self, slots: int, service: float) -> None:
        self.slots, self.service = slots, service
        self.gate: asyncio.Semaphore | None = None
        self.served = self.here = self.peak = 0
        self.first: float | None = None
        self.last = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/stats":
            body = json.dumps({"served": self.served, "peak": self.peak,
                               "first": self.first, "last": self.last}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if self.gate is None:  # made on the server's own event loop
            self.gate = asyncio.Semaphore(self.slots)
        self.first = self.first or time.time()
        self.here += 1
        self.peak = max(self.peak, self.here)
        async with self.gate:
            await asyncio.sleep(self.service)
        self.here -= 1
        self.served += 1
        self.last = time.time()
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": _ANSWER})


def _serve(slots: int, service: float, port: int) -> None:
    uvicorn.run(_Sim(slots, service), port=port, log_level="error", backlog=4096,
                timeout_keep_alive=60, access_log=False, lifespan="off")


@dataclass
class SimulatedServer:
    """A simulated GPU inference server in its own process (its own interpreter and core,
    so its bookkeeping does not slow batchd's down, nor this script's)."""

    slots: int
    service: float
    port: int = field(default_factory=free_port)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> SimulatedServer:
        self.process = multiprocessing.Process(target=_serve, daemon=True,
                                               args=(self.slots, self.service, self.port))
        self.process.start()
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.5)  # as a client polls (each poll is batchd CPU too)
        raise RuntimeError("the simulated server did not start")

    def collect(self) -> dict[str, Any]:
        self.stats = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()
        return self.stats

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)


def batch_file(path: Path, n: int, model: str) -> None:
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({
                "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 16, "temperature": 0,
                         "messages": [{"role": "user", "content": f"question {i}"}]}}) + "\n")


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU so far (from /proc), read the same way for batchd and
    for the plain client that is the floor."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upstream_models(root: Path, urls: list[str]) -> Path:
    models = root / "models.yaml"
    models.write_text("models:\n  - id: gpu\n    engine: upstream\n    base_urls: ["
                      + ", ".join(urls) + "]\n")
    return models


def run_through_batchd(root: Path, urls: list[str], requests: int,
                       env: dict[str, str] | None = None) -> tuple[float, float]:
    """Create a batch for the upstream model; returns seconds from create to completed and
    the CPU-seconds batchd's process spent meanwhile (`env`: the server's extra settings)."""
    models = upstream_models(root, urls)
    batch_file(root / "in.jsonl", requests, "gpu")
    with bench_server(root, models=models, **(env or {})) as server:
        client = httpx.Client(base_url=server.base_url, timeout=60,
                              headers={"Authorization": f"Bearer {server.api_key}"})
        with (root / "in.jsonl").open("rb") as data:
            file_id = client.post("/files", files={"file": ("in.jsonl", data)},
                                  data={"purpose": "batch"}).json()["id"]
        started, cpu_before = time.perf_counter(), cpu_seconds(server.process.pid)
        batch_id = client.post("/batches", json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}).json()["id"]
        while (batch := client.get(f"/batches/{batch_id}").json())["status"] not in (
                "completed", "failed", "cancelled", "expired"):
            time.sleep(0.5)  # as a client polls (each poll is batchd CPU too)
        took = time.perf_counter() - started
        cpu = cpu_seconds(server.process.pid) - cpu_before
        assert batch["request_counts"]["completed"] == requests, batch
        return took, cpu


@dataclass(frozen=True)
class Figures:
    """One run's figures for one server size."""

    utilisation: float
    ms_a_request: float  # batchd's CPU
    server_ms_a_request: float  # the simulated server's own CPU: the machine's yardstick


def one_server(slots: int, service: float, requests: int, *, floor: bool,
               env: dict[str, str] | None = None, who: str = "") -> Figures:
    """`who`: whose code batchd runs, said before the figures (none: this checkout's)."""
    with tempfile.TemporaryDirectory() as tmp, SimulatedServer(slots, service) as sim:
        assert sim.process.pid is not None  # started by __enter__
        sim_before = cpu_seconds(sim.process.pid)
        end_to_end, cpu = run_through_batchd(Path(tmp), [sim.url], requests, env)
        stats = sim.collect()
        sim_cpu = cpu_seconds(sim.process.pid) - sim_before
    ideal = requests / slots * service
    busy = stats["last"] - stats["first"]
    per_1000 = cpu / requests * 1000
    print(f"{who}N={slots:>4} slots, {service:g} s a request, {requests} requests: ideal "
          f"{ideal:.1f} s, server busy {busy:.1f} s -> utilisation {ideal / busy:.2f} "
          f"(end to end {end_to_end:.1f} s, {ideal / end_to_end:.2f}); peak at the server "
          f"{stats['peak']}; batchd CPU {cpu:.1f} s = {per_1000:.2f} CPU-s per 1,000 "
          f"requests ({per_1000:.2f} ms a request)")
    # The simulated server's own CPU a request is this machine's yardstick: it runs the same
    # code on every commit, so it says how a figure here compares with one from another machine.
    print(f"{'':10} the simulated server's own CPU: {sim_cpu / requests * 1000:.2f} ms a "
          f"request; batchd / simulated server = {cpu / sim_cpu if sim_cpu else float('inf'):.2f}")
    if floor:
        with SimulatedServer(slots, service) as sim:
            took, floor_cpu = plain_client(sim.url, requests, slots)
        floor_1000 = floor_cpu / requests * 1000
        print(f"{'':10} floor, a plain asyncio client ({slots} keep-alive connections, "
              f"HTTP/1.1 by hand) on the same server: {took:.1f} s, {floor_1000:.2f} CPU-s "
              f"per 1,000 requests; batchd / floor = "
              f"{per_1000 / floor_1000 if floor_1000 else float('inf'):.1f}")
        with SimulatedServer(slots, service) as sim, \
                multiprocessing.get_context("spawn").Pool(1) as pool:
            took, client_cpu = pool.apply(client_alone, (sim.url, requests, slots))
        client_1000 = client_cpu / requests * 1000
        print(f"{'':10} batchd's HTTP client alone (its aiohttp session, {slots} at once, "
              f"batchd's loop and garbage collection, JSON in and out) on the same server: "
              f"{took:.1f} s, {client_1000:.2f} CPU-s per 1,000 requests = "
              f"{client_1000 / per_1000:.0%} of batchd's")
    return Figures(ideal / busy, per_1000, sim_cpu / requests * 1000)


# Polls every BATCHD_POLL_SECONDS throughout, as before idle polls backed off: the longest
# interval set to the first.
STEADY_POLLS = {"BATCHD_POLL_MAX_SECONDS": str(Settings.model_fields["poll_seconds"].default)}


def idle_cpu(env: dict[str, str], seconds: float = 20.0) -> float:
    """A server with one upstream model and nothing to do: its CPU, in ms a second, over
    `seconds` after 5 s to settle."""
    with tempfile.TemporaryDirectory() as tmp, SimulatedServer(16, 0.1) as sim:
        root = Path(tmp)
        with bench_server(root, models=upstream_models(root, [sim.url]), **env) as server:
            time.sleep(5)
            before, started = cpu_seconds(server.process.pid), time.perf_counter()
            time.sleep(seconds)
            return ((cpu_seconds(server.process.pid) - before)
                    / (time.perf_counter() - started) * 1000)


def polls() -> None:
    """An idle worker's polls backing off (the default) beside polls every BATCHD_POLL_SECONDS
    throughout, the same server otherwise: idle, then a batch at 128 slots, where a server's
    pace (125 answers a second) leaves the store's per-second costs a share of each request."""
    figures = {}
    for label, env in (("backing off (default)", {}), ("every 0.5 s throughout", STEADY_POLLS)):
        print(f"polls {label}: idle server {idle_cpu(env):.1f} ms of CPU a second")
        figures[label] = one_server(128, 1.0, 4000, floor=False, env=env)
    steady, backing_off = figures["every 0.5 s throughout"], figures["backing off (default)"]
    print(f"{'':10} CPU a request at 128 slots, backing off / every 0.5 s = "
          f"{backing_off.ms_a_request / steady.ms_a_request:.2f}; each over its simulated "
          f"server's (the machine's speed drifts between runs) = "
          f"{_over_server(backing_off) / _over_server(steady):.2f}")


def _over_server(figures: Figures) -> float:
    return figures.ms_a_request / figures.server_ms_a_request


def client_alone(url: str, requests: int, at_once: int) -> tuple[float, float]:
    """The share of batchd's CPU that is its HTTP client: the upstream engine's own client
    (engines/upstream_http.py), `at_once` requests in flight, on the loop batchd runs on,
    bodies encoded and answers decoded as the engine does; run in a fresh process, returns
    seconds and that process's CPU-seconds."""
    import orjson

    from batchd import event_loop, garbage
    from batchd.engines.upstream_http import AiohttpHttp

    async def run() -> None:
        http = AiohttpHttp(headers={}, timeout_seconds=600)
        gate = asyncio.Semaphore(at_once)

        async def one(i: int) -> None:
            async with gate:
                answer = await http.post(f"{url}/chat/completions", orjson.dumps({
                    "model": "gpu", "max_tokens": 16, "temperature": 0,
                    "messages": [{"role": "user", "content": f"question {i}"}]}))
                assert answer.status == 200 and orjson.loads(answer.body)["choices"]

        await asyncio.gather(*(one(i) for i in range(requests)))
        await http.aclose()

    garbage.settle_after_start_up()  # as batchd's processes collect garbage
    before, started = os.times(), time.perf_counter()
    event_loop.run(run(), Settings().event_loop)
    after = os.times()
    return (time.perf_counter() - started,
            after.user - before.user + after.system - before.system)


def plain_client(url: str, requests: int, connections: int) -> tuple[float, float]:
    """The least a client can spend: `connections` keep-alive HTTP/1.1 connections, each
    sending the next request when its answer is in; returns seconds and this process's
    CPU-seconds (it runs nothing else meanwhile)."""
    parsed = httpx.URL(url)
    path = f"{parsed.path}/chat/completions".encode()
    host = parsed.host or "127.0.0.1"
    port = parsed.port or 80

    async def connection(todo: list[int]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while todo:
            i = todo.pop()
            body = json.dumps({"model": "gpu", "max_tokens": 16, "temperature": 0,
                               "messages": [{"role": "user", "content": f"question {i}"}]}
                              ).encode()
            writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json"
                         b"\r\ncontent-length: %d\r\n\r\n%s"
                         % (path, host.encode(), len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = json.loads(await reader.readexactly(length))
            assert answer["choices"], answer
        writer.close()

    async def run() -> None:
        todo = list(range(requests))
        await asyncio.gather(*(connection(todo) for _ in range(min(connections, requests))))

    before, started = os.times(), time.perf_counter()
    asyncio.run(run())
    after = os.times()
    return (time.perf_counter() - started,
            after.user - before.user + after.system - before.system)


def two_servers(small: int, large: int, service: float, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, SimulatedServer(small, service) as a, \
            SimulatedServer(large, service) as b:
        end_to_end, _ = run_through_batchd(Path(tmp), [a.url, b.url], requests)
        sa, sb = a.collect(), b.collect()
        ideal = requests / (small + large) * service
        busy = max(sa["last"], sb["last"]) - min(sa["first"], sb["first"])
        print(f"two servers, N={small} and N={large}, {service:g} s a request, {requests} "
              f"requests: ideal {ideal:.1f} s, busy {busy:.1f} s -> utilisation "
              f"{ideal / busy:.2f} (end to end {end_to_end:.1f} s); share of the work "
              f"{sa['served'] / requests:.2f} / {sb['served'] / requests:.2f} (slots "
              f"{small / (small + large):.2f} / {large / (small + large):.2f})")


# Four GPU servers of 768 slots behind one model, 2 s a request: 3,072 requests at once, more
# than a worker's usual chunks of 256 hold (a worker once stopped at eight chunks: 2,048).
FLEET = (4, 768, 2.0, 48000)


def fleet(servers: int, slots: int, service: float, requests: int, *,
          env: dict[str, str] | None = None, who: str = "") -> None:
    """One upstream model over several equal servers: utilisation and batchd's CPU."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        sims = [stack.enter_context(SimulatedServer(slots, service)) for _ in range(servers)]
        _, cpu = run_through_batchd(Path(tmp), [sim.url for sim in sims], requests, env)
        stats = [sim.collect() for sim in sims]
    ideal = requests / (servers * slots) * service
    busy = max(s["last"] for s in stats) - min(s["first"] for s in stats)
    print(f"{who}fleet of {servers} servers x {slots} slots, {service:g} s a request, "
          f"{requests} requests: ideal {ideal:.1f} s, busy {busy:.1f} s -> utilisation "
          f"{ideal / busy:.2f}; peak at each server {[s['peak'] for s in stats]}; batchd "
          f"{cpu / requests * 1000:.2f} ms of CPU a request")


async def _direct(url: str, requests: int, concurrency: int) -> float:
    body = {"model": "m", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "question"}]}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(i: int) -> None:
            async with gate:
                payload = {**body, "messages": [{"role": "user", "content": f"question {i}"}]}
                (await client.post(f"{url}/chat/completions", json=payload)).raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return time.perf_counter() - started


def llama(requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_llama_cpp_server(Path(tmp) / "llama.log")
        try:
            asyncio.run(_direct(url, 4, 1))  # warm-up
            direct = {c: asyncio.run(_direct(url, requests, c)) for c in (1, 2, 4, 8)}
            best = min(direct, key=direct.__getitem__)
            through, _ = run_through_batchd(Path(tmp), [url], requests)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"llama_cpp.server (default model, 16 max tokens, {requests} requests): direct "
          + ", ".join(f"{c} at once {t:.1f} s" for c, t in direct.items())
          + f"; batchd end to end {through:.1f} s -> {direct[best] / through:.2f} of direct at "
            f"its best ({best} at once)")


# The commit issue #28 measured (3.25 ms of batchd CPU a request at 512 slots, on the machine it
# was filed on), and the target for that figure.
FILED, FILED_MS, TARGET_MS = "ad3ba12", 3.25, 0.5
# Each size's server and batch: short answers, as classification and extraction batches ask
# for (max_tokens 16); the slots and service time are a GPU server's, scaled down.
SIZES = {"16": (16, 0.1, 3000), "128": (128, 1.0, 4000), "512": (512, 1.0, 8000),
         "2048": (2048, 1.0, 16000)}


def beside(name: str, ours: Figures, code: Path, against: str) -> Figures:
    """Size `name` again on the pinned commit's `code`, and the two side by side."""
    slots, service, requests = SIZES[name]
    theirs = one_server(slots, service, requests, floor=False, env=pinned_env(code),
                        who=f"{against}: ")
    ratio = ours.ms_a_request / theirs.ms_a_request
    target = (f" (the target, {TARGET_MS:g} ms against the {FILED_MS:g} ms it spent at 512 "
              f"slots when the issue was filed: {TARGET_MS / FILED_MS:.2f})"
              if against == FILED else "")
    print(f"{'':10} this code / {against}, CPU a request: {ratio:.2f}{target}; utilisation "
          f"{ours.utilisation:.2f} against {theirs.utilisation:.2f}")
    return theirs


def _spread(values: list[float]) -> str:
    """Median and range, as `0.42 (0.38-0.47)`."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="16,128,512,2048,pair,fleet,polls")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also drive each server with a plain client, the CPU floor")
    parser.add_argument("--llama", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole list this many times, alternated, and print each "
                             "size's median and range (a shared machine's speed drifts)")
    parser.add_argument("--against", default=FILED,
                        help="an earlier commit to run each size on beside this one, "
                             "alternated ('none': skip; default: the commit issue #28 measured)")
    args = parser.parse_args()
    defaults = UpstreamOptions.model_fields
    print(f"batchd: default settings (upstream initial_concurrency "
          f"{defaults['initial_concurrency'].default}, max_concurrency "
          f"{defaults['max_concurrency'].default}, latency_tolerance "
          f"{defaults['latency_tolerance'].default}; worker poll 0.5 s; {event_loop_said()}, "
          "for both commits; the earlier commit with its own defaults otherwise); each "
          "simulated server in a process of its own (uvicorn's own choice of loop and parser, "
          "as vLLM's); the floor's client on asyncio's loop")
    runs: dict[str, Callable[[], Figures | None]] = {
        name: functools.partial(one_server, *size, floor=args.floor)
        for name, size in SIZES.items()}
    runs["pair"] = lambda: two_servers(64, 192, 1.0, 3000)
    runs["fleet"] = lambda: fleet(*FLEET)
    runs["polls"] = polls
    seen: dict[str, list[Figures]] = {}
    ratios: dict[str, list[float]] = {}
    against = None if args.against == "none" else args.against
    with tempfile.TemporaryDirectory() as tmp, \
            (pinned_checkout(against, Path(tmp)) if against else contextlib.nullcontext()) as old:
        for _ in range(args.repeat):
            for name in args.only.split(","):
                figures = runs[name]()
                if name == "fleet" and old is not None:
                    fleet(*FLEET, env=pinned_env(old), who=f"{args.against}: ")
                if isinstance(figures, Figures):
                    seen.setdefault(name, []).append(figures)
                    if old is not None:  # checked out: `--against` named a commit
                        theirs = beside(name, figures, old, args.against)
                        seen.setdefault(f"{name} on {args.against}", []).append(theirs)
                        ratios.setdefault(name, []).append(
                            figures.ms_a_request / theirs.ms_a_request)
    if args.repeat > 1:
        for name, all_figures in seen.items():
            print(f"N={name:>4} over {len(all_figures)} alternated runs: " + ", ".join(
                f"{label} {_spread([getattr(f, field) for f in all_figures])}"
                for label, field in (("utilisation", "utilisation"),
                                     ("batchd ms a request", "ms_a_request"),
                                     ("simulated server ms a request",
                                      "server_ms_a_request"))))
        for name, values in ratios.items():
            print(f"N={name:>4} this code / {against}, CPU a request: {_spread(values)}")
    if args.llama:
        llama(96)


if __name__ == "__main__":
    main()
