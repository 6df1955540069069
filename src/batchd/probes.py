"""Liveness and readiness, for orchestrators: `/healthz` and `/readyz`.

`/healthz` (liveness) depends on nothing outside the process: it fails only when the process
should be restarted (its worker died). `/readyz` (readiness) says whether to send it work now:
503 with the reason while it starts (waiting for the database and the object store, loading
models), while the database or the object store does not answer, and once it drains after
SIGTERM. Both are on the API port, and, with `/metrics`, on `BATCHD_METRICS_PORT` in every
process (the only HTTP a `batchd worker` serves); the metrics port comes up first, so a
starting process already says why it is not ready.

The outside checks run in the background every few seconds (a probe never waits on the
database, and many probes cost one check); a check that stops running (a blocked event loop)
makes the process not ready too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from batchd.backends import outage
from batchd.metrics import REGISTRY
from batchd.shielding import stop_then_wait

log = logging.getLogger(__name__)


class Pingable(Protocol):
    async def ping(self) -> None: ...


class Probes:
    """What `/healthz` and `/readyz` answer in one process. Its methods are called on the
    event loop; the answers are read from any thread (the metrics port's)."""

    def __init__(self, *, every: float = 5.0, timeout: float = 5.0) -> None:
        self.every = every
        self.timeout = timeout
        self._phase: str | None = "starting"  # why it is not ready yet; None once started
        self._outage: str | None = None
        self._checked_at: float | None = None
        self._draining = False
        self._dead: str | None = None

    # --- what the process tells it ----------------------------------------------------------

    def starting(self, what: str) -> None:
        """Not ready yet, because of `what` ("loading models")."""
        self._phase = what

    def started(self) -> None:
        self._phase = None

    def drain(self) -> None:
        """Shutting down: take no more work (readiness fails from now on)."""
        self._draining = True

    def died(self, reason: str) -> None:
        """The process must be restarted (liveness fails from now on)."""
        self._dead = reason

    # --- what the probes answer -------------------------------------------------------------

    def liveness_problem(self) -> str | None:
        return self._dead

    def readiness_problem(self) -> str | None:
        if self._dead is not None:
            return self._dead
        if self._draining:
            return "shutting down (draining after SIGTERM)"
        if self._phase is not None:
            return self._phase
        if self._outage is not None:
            return self._outage
        if self._checked_at is not None:
            late = time.monotonic() - self._checked_at
            if late > 3 * self.every + self.timeout:
                return (f"the readiness checks have not run for {late:.0f} s "
                        "(the event loop is blocked?)")
        return None

    # --- the background checks --------------------------------------------------------------

    async def check(self, store: Pingable, blobs: object) -> None:
        """Reach the database and the object store once, and remember what failed."""
        problem = None
        try:
            async with asyncio.timeout(self.timeout):
                await store.ping()
        except TimeoutError:
            problem = f"the database did not answer within {self.timeout:g} s"
        except Exception as exc:
            problem = outage(exc) or f"the database check failed ({type(exc).__name__}: {exc})"
        if problem is None:
            problem = await self._check_blobs(blobs)
        if problem != self._outage:
            if problem:
                log.warning("not ready: %s", problem)
            elif self._outage:
                log.info("ready again (%s no more)", self._outage)
        self._outage = problem
        self._checked_at = time.monotonic()

    async def _check_blobs(self, blobs: object) -> str | None:
        check: Callable[[], None] | None = getattr(blobs, "check", None)
        if check is None:
            return None
        try:
            # shield: a timed-out check goes on in its thread; the next one starts afresh.
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(asyncio.to_thread(check))
        except TimeoutError:
            return f"the object store did not answer within {self.timeout:g} s"
        except Exception as exc:
            return outage(exc) or f"the object store check failed ({type(exc).__name__}: {exc})"
        return None

    async def watch(self, store: Pingable, blobs: object, stop: asyncio.Event) -> None:
        """Check every `every` seconds until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await stop.wait()
            if not stop.is_set():
                await self.check(store, blobs)

    @contextlib.asynccontextmanager
    async def watching(self, store: Pingable, blobs: object) -> Any:
        """Checks first once (so that readiness starts from a fact), then in the background.
        At the end a check under way is let finish (it is bounded by `timeout`)."""
        await self.check(store, blobs)
        stop = asyncio.Event()
        task = asyncio.create_task(self.watch(store, blobs, stop), name="probes:watch")
        try:
            yield
        finally:
            await stop_then_wait(task, stop, within=2 * self.timeout)

    # --- the metrics port -------------------------------------------------------------------

    @contextlib.contextmanager
    def serving(self, host: str, port: int | None) -> Iterator[None]:
        """`/metrics`, `/healthz` and `/readyz` on `port` (none if None), in a thread: they
        answer even while the event loop is busy loading models. No key is asked there:
        bind it where only Prometheus and the orchestrator reach."""
        if port is None:
            yield
            return
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class: type[_ThreadingServer] = type(
            "MetricsPortServer", (_ThreadingServer,), {"address_family": family})
        server: WSGIServer = make_server(host, port, self.wsgi_app(), server_class,
                                         _QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="batchd:metrics-port",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def wsgi_app(self) -> Callable[..., Iterable[bytes]]:
        metrics = make_wsgi_app(REGISTRY)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path in ("/healthz", "/readyz"):
                problem = (self.liveness_problem() if path == "/healthz"
                           else self.readiness_problem())
                status, body = answer(problem, code="worker_failed" if path == "/healthz"
                                      else "not_ready")
                headers = [("Content-Type", "application/json")]
                if problem:
                    headers.append(("Retry-After", "5"))
                start_response(status, headers)
                return [body]
            if path in ("/", "/metrics"):
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [json.dumps({"error": {"message": f"no such path: {path}; this port serves "
                                          "/metrics, /healthz and /readyz",
                                          "type": "invalid_request_error", "param": None,
                                          "code": "not_found"}}).encode()]

        return app


def answer(problem: str | None, *, code: str) -> tuple[str, bytes]:
    """The probe's status line and body: `{"status": "ok"}`, or OpenAI's error shape."""
    if problem is None:
        return "200 OK", b'{"status":"ok"}'
    return "503 Service Unavailable", json.dumps(
        {"error": {"message": problem, "type": "server_error", "param": None,
                   "code": code}}).encode()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would fill the log."""
