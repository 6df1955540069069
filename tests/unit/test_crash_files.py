"""A worker process's crash file tells its next life how it died: a fatal signal leaves a
trace (recorded on that life's chunks), a SIGKILL leaves none, a clean exit leaves no file,
and a live process's file is left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchd.worker import crashes
from batchd.worker.crashes import Life, read_crash_file, record_past_lives


class FakeStore:
    def __init__(self) -> None:
        self.crashes: list[tuple[str, str, str]] = []

    async def record_crash(self, *, owner: str, life: str, cause: str) -> int:
        self.crashes.append((owner, life, cause))
        return 1


def _die(folder: Path, how: str) -> str:
    """A process that starts a life (faulthandler armed) and dies `how`; returns its life."""
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        from pathlib import Path
        from batchd.worker.crashes import Life
        life = Life(Path({str(folder)!r}), "worker-dead", arm=True)
        print(life.id, flush=True)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if {how!r} == "abort":
            os.abort()
        if {how!r} == "segv":
            import ctypes
            ctypes.string_at(0)
        if {how!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        life.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip()


@pytest.mark.parametrize(("how", "cause"), [("abort", "SIGABRT"), ("segv", "SIGSEGV")])
async def test_a_fatal_signal_is_recorded_against_that_life_once(
    tmp_path: Path, how: str, cause: str,
) -> None:
    life = _die(tmp_path, how)
    own = Life(tmp_path, "worker-new", arm=False)
    store = FakeStore()
    assert await record_past_lives(store, tmp_path, own=own) == 1
    assert store.crashes == [("worker-dead", life, cause)]
    assert await record_past_lives(store, tmp_path, own=own) == 0  # its file is gone
    assert [p.name for p in tmp_path.iterdir()] == [own.path.name]
    own.close()
    assert list(tmp_path.iterdir()) == []  # a clean exit leaves no file


async def test_a_kill_without_a_trace_records_nothing(tmp_path: Path) -> None:
    _die(tmp_path, "kill")
    store = FakeStore()
    own = Life(tmp_path, "worker-new", arm=False)
    assert await record_past_lives(store, tmp_path, own=own) == 0
    assert store.crashes == [] and [p.name for p in tmp_path.iterdir()] == [own.path.name]
    own.close()


async def test_a_clean_exit_leaves_nothing_and_a_live_life_is_left_alone(
    tmp_path: Path,
) -> None:
    _die(tmp_path, "exit")
    assert list(tmp_path.iterdir()) == []
    alive = Life(tmp_path, "worker-alive", arm=False)  # its lock is held: another process's
    alive.path.write_text(alive.path.read_text() + "Fatal Python error: Aborted\n")
    own = Life(tmp_path, "worker-new", arm=False)
    store = FakeStore()
    assert await record_past_lives(store, tmp_path, own=own) == 0
    assert alive.path.exists() and store.crashes == []
    alive.close()
    own.close()


def test_reading_a_crash_file() -> None:
    past = read_crash_file("worker w-1 life life-2\nFatal Python error: Bus error\n\n"
                           "Current thread 0x1 (most recent call first):\n  File \"x\"\n")
    assert (past.worker, past.life, past.cause) == ("w-1", "life-2", "SIGBUS")
    assert past.trace.startswith("Fatal Python error: Bus error")
    assert read_crash_file("worker w-1 life life-2\n").cause is None
    assert read_crash_file("").worker is None
    assert set(crashes.SIGNALS.values()) == {"SIGSEGV", "SIGABRT", "SIGFPE", "SIGBUS",
                                             "SIGILL"}
