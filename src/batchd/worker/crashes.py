"""How a worker process died, told by the host it ran on: the evidence deaths.py charges.

Each worker process (a *life*) keeps a crash file, `<data_dir>/lives/<life>.crash`, locked for
as long as it lives. Its first line names the worker and the life; `faulthandler` writes to it
on a fatal signal (llama.cpp aborts with SIGABRT; a bad pointer is SIGSEGV); a clean exit
removes it. The dying process cannot reach the store, so its next life on the same host (or
any worker sharing that data dir) reads the file at start-up, before it takes back its leases:

- a trace in it: that life crashed. The chunks it still held, with in-flight records of that
  very life (a record of an earlier or later life is not this crash's), get the evidence;
- no trace: it was killed from outside (`kill -9`, the OOM killer) or its host went down.
  Nothing is recorded, and the death counts as one without a trace.

Either way the file is then removed, so no crash is ever recorded twice. A file whose lock is
held belongs to a live process sharing the data dir, and is left alone.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import logging
import re
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

log = logging.getLogger(__name__)

SIGNALS = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT",
           "Floating point exception": "SIGFPE", "Bus error": "SIGBUS",
           "Illegal instruction": "SIGILL"}
"""faulthandler's names for the fatal signals it records."""

_HEADER = re.compile(r"worker (\S+) life (\S+)")
_FATAL = re.compile(r"^Fatal Python error: (.+?)\s*$", re.M)


class CrashStore(Protocol):
    def record_crash(self, *, owner: str, life: str, cause: str) -> Awaitable[int]: ...


class Life:
    """This process's life as a worker, and the crash file that outlives it if it dies.
    `arm`: have faulthandler write there (a process-wide setting: the `batchd` commands arm
    it, an app built inside tests leaves the test runner's own)."""

    def __init__(self, folder: Path, worker: str, *, arm: bool) -> None:
        self.id = f"life-{secrets.token_hex(8)}"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.id}.crash"
        # Made under another name, locked and headed, then renamed: another worker sharing
        # the data dir never sees a crash file that is not yet locked or has no header.
        starting = folder / f"{self.id}.starting"
        self._file: IO[str] | None = open(starting, "a", encoding="utf-8")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: always ours
        # Written before faulthandler may write: a trace always follows its header.
        self._file.write(f"worker {worker} life {self.id}\n")
        self._file.flush()
        starting.rename(self.path)
        self.armed = arm
        if arm:
            faulthandler.enable(self._file, all_threads=True)

    def close(self) -> None:
        """A clean exit: no crash file is left behind."""
        if self._file is None:
            return
        if self.armed:
            faulthandler.disable()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._file.close()
        self._file = None


@dataclass(frozen=True)
class PastLife:
    worker: str | None
    life: str | None
    cause: str | None  # the fatal signal (SIGSEGV…); None: it left no trace
    trace: str


def read_crash_file(text: str) -> PastLife:
    header = _HEADER.match(text)
    fatal = _FATAL.search(text)
    cause = SIGNALS.get(fatal.group(1), fatal.group(1)) if fatal else None
    return PastLife(worker=header.group(1) if header else None,
                    life=header.group(2) if header else None, cause=cause,
                    trace=text[header.end():].strip() if header else text.strip())


async def record_past_lives(store: CrashStore, folder: Path, *, own: Life) -> int:
    """Record the crashes of the lives whose files are left in `folder` on the chunks they
    had requests in flight on, and remove those files; returns how many chunks got one."""
    recorded = 0
    for path in sorted(folder.glob("*.crash")):
        if path == own.path:
            continue
        try:
            file = open(path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue  # another worker sharing the data dir took it meanwhile
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live process's
            if not path.exists():
                continue  # another worker read and removed it between our open and lock
            past = read_crash_file(file.read())
            if past.worker is None:
                continue  # not a crash file this version wrote: not ours to remove
            if past.cause is not None and past.worker and past.life:
                try:
                    chunks = await store.record_crash(owner=past.worker, life=past.life,
                                                      cause=past.cause)
                except Exception:
                    # Kept for the next start; meanwhile that death counts as one without
                    # a trace (never a false verdict).
                    log.warning("could not record the crash of worker %s (%s) yet",
                                past.worker, past.life, exc_info=True)
                    continue
                recorded += chunks
                log.warning("worker %s (%s) crashed with %s, %s; its trace:\n%s",
                            past.worker, past.life, past.cause,
                            f"the requests in flight on {chunks} chunk(s) are charged with it"
                            if chunks else "and no chunk it held still shows that life's "
                            "requests in flight (it was idle or loading, or another worker took "
                            "them over): nobody is charged",
                            past.trace)
            else:
                log.info("worker %s (%s) died without a trace (killed from outside, or its "
                         "host went down): its requests are not charged as poison",
                         past.worker, past.life)
            path.unlink(missing_ok=True)
    return recorded
