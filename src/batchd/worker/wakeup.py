"""Wake-ups for the worker in this process: a service that has just made work (a batch
created, cancelled or retried; a webhook test event) says so, and the worker looks now
instead of at its next poll.

Only the worker in this process hears them. Workers elsewhere learn of the work from the
store itself: on PostgreSQL the transaction that made it also sends a NOTIFY; otherwise they
poll.
"""

from __future__ import annotations

from collections.abc import Callable


class Wakeup:
    """The worker's bell: app.py hands it to the services (as a plain callable, so they need
    not import the worker) and attaches the worker once one runs in this process (the
    services are built before it starts). Without one, a wake-up does nothing."""

    def __init__(self) -> None:
        self._worker: Callable[[], None] | None = None

    def attach(self, wake: Callable[[], None]) -> None:
        self._worker = wake

    def __call__(self) -> None:
        if self._worker is not None:
            self._worker()
