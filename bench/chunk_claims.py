"""A chunk's store calls against the number of chunks waiting: does a claim cost more when a
batch is huge?

Two running batches of two owners, N chunks each, on a fresh database, and 16 of their chunks
leased to other workers throughout; then a worker's round for each of `--chunks` chunks as
the worker makes them: claim, reserve, heartbeat, checkpoint, commit. Printed a chunk: this
process's CPU (user + system) and the wall time, which on PostgreSQL holds the server's work
too. N = 100, 1,000 and 5,000 (a batch of 1.28 million
requests at the default 256 lines a chunk), on SQLite (a file in WAL mode, as batchd's) and
on a PostgreSQL server this script starts. Target: flat in N (the 5,000 / 100 ratio near 1).

Each figure also runs on an earlier commit (`--against`, from a `git worktree` of this
checkout; default f53fb87, the last before claims went through the partial index of
unfinished chunks), in a fresh interpreter like this code's, one after the other on the same
database server.

    .venv/bin/python bench/chunk_claims.py [--sizes 100,1000,5000] [--chunks 40]
        [--backends sqlite,postgresql] [--against f53fb87 | --against none]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.backends import PostgresServer

from bench.common import REPO, pinned_checkout, pinned_env

HELD = 16  # chunks leased to other workers throughout (four workers of four chunks)


async def rounds(url: str, waiting: int, chunks: int) -> dict[str, float]:
    """The worker's calls for `chunks` chunks, with two batches of `waiting` chunks each."""
    from tests.contract.store_builders import LEASE, NOW, running_batch

    from batchd.store.metadata import MetadataStore
    from batchd.store.records import ChunkProgress

    store = MetadataStore(url)
    await store.migrate()
    for owner in ("alice", "bob"):
        await running_batch(store, chunks=waiting, owner=owner)
    for _ in range(HELD):  # what the other workers are running meanwhile
        assert await store.claim_chunk(worker="others", now=NOW, lease_seconds=1e9)
    part = {"ok": "batches/x/parts/0-ok", "err": None, "n_ok": 1, "n_err": 0}
    before, started = os.times(), time.perf_counter()
    for n in range(chunks):
        now = NOW + n
        claim = await store.claim_chunk(worker="w", now=now, lease_seconds=LEASE,
                                        models=["m"], served=["m"])
        assert claim is not None
        chunk, lease = claim
        assert await store.reserve_chunk(chunk, lease, in_flight={"ids": ["r"], "life": "l"})
        assert await store.heartbeat_chunk(chunk, lease, progress=ChunkProgress(n_ok=1),
                                           now=now, lease_seconds=LEASE) is not None
        assert await store.checkpoint_chunk(chunk, lease, parts=[part],
                                            committed=ChunkProgress(n_ok=1), now=now,
                                            lease_seconds=LEASE)
        assert await store.commit_chunk(chunk, lease, parts=[part, part],
                                        committed=ChunkProgress(n_ok=2), now=now)
    after, took = os.times(), time.perf_counter() - started
    await store.close()
    return {"cpu_ms": (after.user - before.user + after.system - before.system) / chunks * 1e3,
            "wall_ms": took / chunks * 1e3}


def measure(url: str, waiting: int, chunks: int, code: Path | None) -> dict[str, float]:
    """`rounds` in a fresh interpreter, on `code` (an earlier commit's src/) or this one's."""
    env = {**os.environ, **(pinned_env(code) if code else {})}
    done = subprocess.run([sys.executable, __file__, "--child", url, str(waiting), str(chunks)],
                          env=env, capture_output=True, text=True, check=True, cwd=REPO)
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--against", default="f53fb87")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, waiting, chunks = args.child
        print(json.dumps(asyncio.run(rounds(url, int(waiting), int(chunks)))))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    started = time.perf_counter()
    print(f"{args.chunks} chunks a figure (claim, reserve, heartbeat, checkpoint, commit), "
          f"each in a fresh process on asyncio's loop, two batches of N chunks waiting, "
          f"{HELD} leased to other workers")
    with tempfile.TemporaryDirectory() as tmp, (
            pinned_checkout(args.against, Path(tmp)) if args.against != "none"
            else contextlib.nullcontext()) as code:
        for backend in args.backends.split(","):
            server = PostgresServer() if backend == "postgresql" else None
            if server is not None:
                server.start()
            try:
                _backend(backend, server, Path(tmp), sizes, args, code)
            finally:
                if server is not None:
                    server.stop()
    print(f"took {time.perf_counter() - started:.0f} s")


def _backend(backend: str, server: PostgresServer | None, tmp: Path, sizes: list[int],
             args: argparse.Namespace, code: Path | None) -> None:
    def database(name: str) -> str:
        if server is not None:
            return server.create_database()
        return f"sqlite+aiosqlite:///{tmp / f'{name}.sqlite3'}"

    print(f"--- {backend}")
    first: dict[str, dict[str, float]] = {}
    for size in sizes:
        contenders = {"this code": None, **({args.against: code} if code else {})}
        line = []
        for name, src in contenders.items():
            got = measure(database(f"{name.replace(' ', '-')}-{size}"), size, args.chunks, src)
            first.setdefault(name, got)
            grew = got["wall_ms"] / first[name]["wall_ms"]
            line.append(f"{name}: {got['cpu_ms']:6.2f} ms CPU, {got['wall_ms']:7.2f} ms wall "
                        f"a chunk (x{grew:.1f} the first size's wall)")
        print(f"N={size:6,}  " + ";  ".join(line), flush=True)


if __name__ == "__main__":
    main()
