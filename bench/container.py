"""The container image's size and its cold start: from `podman run` to `/readyz` answering 200
(the embedded default: SQLite and the data dir on the container's volume, the default model
loaded, the worker started), for `batchd serve` and for `batchd worker`'s probes.

    python bench/container.py [--rounds 3] [--build]

Built from the Dockerfile on the Debian bookworm base made from Debian's packages (see
tests/support/container.py); `--build` rebuilds first (the layer cache keeps llama.cpp's
compile). Every round starts a fresh container on a fresh volume. Nothing else should run on
the machine meanwhile."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.container import (
    IMAGE,
    Container,
    build_image,
    image_size,
    podman,
    unique,
)
from tests.support.ports import free_port


def cold_start(args: list[str], port_of: str) -> float:
    """Seconds from `podman run` to /readyz 200 on the given port (the API's or metrics')."""
    api, metrics = free_port(), free_port()
    port = api if port_of == "api" else metrics
    container = Container(unique("bench"), args, {"BATCHD_PORT": str(api),
                                                  "BATCHD_METRICS_PORT": str(metrics),
                                                  "BATCHD_API_KEY": "sk-bench"})
    started = time.monotonic()
    container.start()
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 300:
                raise RuntimeError(f"not ready after 300 s:\n{container.logs()[-3000:]}")
            time.sleep(0.05)
    finally:
        container.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", action="store_true", help="build the image first")
    options = parser.parse_args()
    if options.build or podman("image", "exists", IMAGE, check=False).returncode != 0:
        print(f"building {IMAGE} ...", flush=True)
        print(f"  built in {build_image():.0f} s")
    print(f"machine: {os.cpu_count()} cores; podman with runc, host network; "
          f"image {IMAGE} (Debian bookworm base, llama.cpp for AVX2)")
    print(f"image size: {image_size() / 1e6:.0f} MB")
    # Warm-up: the first run after a build pays for reading the layers from disk once.
    cold_start(["serve"], "api")
    for name, args, port_of in (("serve (API + embedded worker, SQLite)", ["serve"], "api"),
                                ("worker (probes on the metrics port)", ["worker"], "metrics")):
        times = [cold_start(args, port_of) for _ in range(options.rounds)]
        print(f"cold start, {name}: median {statistics.median(times):.2f} s "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
