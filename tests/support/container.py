"""batchd's container image (the Dockerfile at the root), built and run with podman the way
this kind of machine allows (../shared/SERVICES.md): runc with cgroupfs, the host network,
explicit ulimits, and a Debian bookworm base made from Debian's own packages with mmdebstrap
(there is no registry to pull `python:3.11-slim-bookworm` from). The Dockerfile takes the base
as a build argument, so the image built here is the one users build from a registry's base.

The container tier (tests/container) and bench/container.py use it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import REPO

BASE = "localhost/debian:bookworm"
IMAGE = os.environ.get("BATCHD_TEST_IMAGE", "localhost/batchd:test")
CACHE = Path(os.environ.get("BATCHD_CONTAINER_CACHE", "~/.cache/batchd-container")).expanduser()
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
# The host network (this VM's podman has no other) and the limits runc needs set here.
RUN_FLAGS = ["--network", "host", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024"]


def podman(*args: str, check: bool = True, timeout: float | None = 120,
           capture: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], check=check, timeout=timeout, text=True,
                          capture_output=capture)


def ensure_base() -> None:
    """The bookworm base image, from Debian's packages (once per machine)."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / "bookworm-rootfs.tar"
    if not rootfs.exists():
        partial = CACHE / "bookworm-rootfs.partial.tar"  # mmdebstrap reads the format off the name
        subprocess.run(["mmdebstrap", "--variant=minbase",
                        "--include=python3,python3-venv,ca-certificates", "bookworm",
                        str(partial)], check=True, capture_output=True, timeout=900)
        partial.rename(rootfs)
    podman("import", str(rootfs), BASE, timeout=300)


def build_image(tag: str = IMAGE, *, log: Path | None = None) -> float:
    """Build the image from this checkout (podman's layer cache keeps llama.cpp's compile
    while the runtime dependencies stay the same); returns the seconds it took. pip inside
    reaches PyPI with the host's CA bundle (SERVICES.md)."""
    ensure_base()
    started = time.monotonic()
    args = [*PODMAN, "build", "--network", "host", "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
            "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE}", "-t", tag, str(REPO)]
    with (log.open("w") if log else open(os.devnull, "w")) as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    if done.returncode != 0:
        tail = log.read_text()[-4000:] if log else ""
        raise RuntimeError(f"podman build failed ({done.returncode}):\n{tail}")
    return time.monotonic() - started


def image_size(tag: str = IMAGE) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


@dataclass
class Container:
    """One detached container of the image, on the host network."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def start(self, image: str = IMAGE) -> Container:
        flags = [item for key, value in self.env.items() for item in ("-e", f"{key}={value}")]
        podman("run", "-d", "--name", self.name, *RUN_FLAGS, *flags, image, *self.args)
        return self

    def kill(self, signal: str = "KILL") -> None:
        podman("kill", "--signal", signal, self.name, check=False)

    def stop(self, seconds: int = 30) -> int:
        """SIGTERM, then SIGKILL after `seconds`; the exit code."""
        podman("stop", "-t", str(seconds), self.name, check=False, timeout=seconds + 60)
        return self.exit_code()

    def exit_code(self) -> int:
        state = json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)
        return int(state["ExitCode"])

    def running(self) -> bool:
        state = json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)
        return bool(state["Running"])

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-v", self.name, check=False)


def run_once(*args: str, env: dict[str, str] | None = None, entrypoint: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A container that runs to its end (`batchd migrate`, `id -u`), removed afterwards."""
    flags = [item for key, value in (env or {}).items() for item in ("-e", f"{key}={value}")]
    if entrypoint:
        flags += ["--entrypoint", entrypoint]
    return podman("run", "--rm", *RUN_FLAGS, *flags, IMAGE, *args, check=False,
                  timeout=timeout)


@contextlib.contextmanager
def containers() -> Iterator[list[Container]]:
    """Containers started in the block, removed after it (their logs kept on failure)."""
    made: list[Container] = []
    try:
        yield made
    finally:
        for container in made:
            container.remove()


def unique(name: str) -> str:
    return f"batchd-test-{name}-{uuid.uuid4().hex[:8]}"
