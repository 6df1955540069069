"""A stable worker identity per data directory, so a restarted server takes back the work its
previous life held at once instead of waiting for those leases to lapse; and this process's
life under it, whose crash file tells the next life how it died (crashes.py)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from batchd import ids
from batchd.worker.crashes import Life


class WorkerIdentity:
    """Holds an exclusive lock on `<data_dir>/worker.lock` for as long as it lives. If another
    process holds it, this one gets a fresh random id (and reclaims nothing).
    `record_crashes`: faulthandler writes this life's crash file (see Life)."""

    def __init__(self, data_dir: Path, *, record_crashes: bool = False) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.lives = data_dir / "lives"
        self._lock: IO[str] | None = open(data_dir / "worker.lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            self.id = ids.worker_id()
            self.stable = False
            self.life = Life(self.lives, self.id, arm=record_crashes)
            return
        id_file = data_dir / "worker-id"
        if id_file.exists():
            self.id = id_file.read_text().strip()
        else:
            self.id = ids.worker_id()
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(self.id)
            os.replace(tmp, id_file)
        self.stable = True
        self.life = Life(self.lives, self.id, arm=record_crashes)

    def close(self) -> None:
        self.life.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
