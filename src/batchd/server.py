"""The uvicorn server batchd runs under."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import uvicorn


class CleanExitServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process dies by the
    signal (exit status -15). For batchd a graceful stop is a success: it exits 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {sig: signal.signal(sig, self.handle_exit)
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)
