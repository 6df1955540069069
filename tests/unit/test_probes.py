"""/healthz and /readyz: what each says while a process starts, runs, loses a backend, drains
and dies, and the metrics port that serves them beside /metrics."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from batchd.errors import ServiceUnavailable
from batchd.probes import Probes
from tests.support.ports import free_port

pytestmark = pytest.mark.backend_independent


class Store:
    def __init__(self) -> None:
        self.problem: BaseException | None = None
        self.hang = False

    async def ping(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.problem is not None:
            raise self.problem


class Blobs:
    def __init__(self) -> None:
        self.problem: BaseException | None = None
        self.hang = False

    def check(self) -> None:
        if self.hang:
            time.sleep(0.5)
        if self.problem is not None:
            raise self.problem


async def test_a_process_is_ready_only_once_started_and_its_backends_answer() -> None:
    probes, store, blobs = Probes(), Store(), Blobs()
    assert probes.readiness_problem() == "starting"
    probes.starting("loading models")
    assert probes.readiness_problem() == "loading models"
    assert probes.liveness_problem() is None  # loading is alive
    probes.started()
    assert probes.readiness_problem() is None
    store.problem = ServiceUnavailable("the database is unreachable (connection refused)")
    await probes.check(store, blobs)
    assert probes.readiness_problem() == "the database is unreachable (connection refused)"
    assert probes.liveness_problem() is None  # an outage is no reason to restart
    store.problem = None
    blobs.problem = ServiceUnavailable("the object store is unreachable (timed out)")
    await probes.check(store, blobs)
    assert probes.readiness_problem() == "the object store is unreachable (timed out)"
    blobs.problem = None
    await probes.check(store, blobs)
    assert probes.readiness_problem() is None


async def test_a_backend_that_does_not_answer_in_time_makes_it_not_ready() -> None:
    probes, store, blobs = Probes(timeout=0.05), Store(), Blobs()
    probes.started()
    store.hang = True
    await probes.check(store, blobs)
    assert probes.readiness_problem() == "the database did not answer within 0.05 s"
    store.hang, blobs.hang = False, True
    await probes.check(store, blobs)
    assert probes.readiness_problem() == "the object store did not answer within 0.05 s"


async def test_an_unexpected_failure_of_a_check_is_named_not_raised() -> None:
    probes, store = Probes(), Store()
    probes.started()
    store.problem = RuntimeError("odd")
    await probes.check(store, Blobs())
    assert probes.readiness_problem() == "the database check failed (RuntimeError: odd)"


async def test_checks_that_stop_running_make_it_not_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    probes = Probes(every=1.0, timeout=1.0)
    probes.started()
    await probes.check(Store(), Blobs())
    later = time.monotonic() + 10
    monkeypatch.setattr(time, "monotonic", lambda: later)
    problem = probes.readiness_problem()
    assert problem is not None and problem.startswith("the readiness checks have not run for")


def test_draining_and_dying_win_over_everything() -> None:
    probes = Probes()
    probes.started()
    probes.drain()
    assert probes.readiness_problem() == "shutting down (draining after SIGTERM)"
    assert probes.liveness_problem() is None
    probes.died("the worker stopped: its chunks loop failed")
    assert probes.readiness_problem() == probes.liveness_problem() == \
        "the worker stopped: its chunks loop failed"


async def test_watching_checks_at_once_then_in_the_background() -> None:
    probes, store, blobs = Probes(every=0.02), Store(), Blobs()
    probes.started()
    async with probes.watching(store, blobs):
        assert probes.readiness_problem() is None
        store.problem = ServiceUnavailable("the database is unavailable (shutting down)")
        for _ in range(100):
            if probes.readiness_problem():
                break
            await asyncio.sleep(0.01)
        assert probes.readiness_problem() == "the database is unavailable (shutting down)"


def test_the_metrics_port_serves_metrics_and_both_probes() -> None:
    probes, port = Probes(), free_port()
    with probes.serving("127.0.0.1", port):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        starting = httpx.get(f"{base}/readyz")
        assert starting.status_code == 503
        assert starting.headers["retry-after"] == "5"
        assert starting.json() == {"error": {"message": "starting", "type": "server_error",
                                             "param": None, "code": "not_ready"}}
        probes.started()
        assert httpx.get(f"{base}/readyz").json() == {"status": "ok"}
        assert "batchd_http_requests" in httpx.get(f"{base}/metrics").text
        missing = httpx.get(f"{base}/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        probes.died("the worker stopped")
        dead = httpx.get(f"{base}/healthz")
        assert dead.status_code == 503 and dead.json()["error"]["code"] == "worker_failed"
    with pytest.raises(httpx.ConnectError):  # closed with the process's services
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)



class YieldingStore:
    """A database that answers after one turn of the event loop."""

    async def ping(self) -> None:
        await asyncio.sleep(0)


@pytest.mark.timeout(20)
async def test_the_checks_end_whenever_they_are_stopped() -> None:
    # Python 3.11's asyncio.wait_for returned the result of a check that finished just as the
    # wait was cancelled, swallowing the cancellation: the checks then ran on and a shutdown
    # waited for them forever. Stop them at every moment of a few rounds.
    for turns in range(40):
        async with asyncio.timeout(5):
            async with Probes(every=0).watching(YieldingStore(), Blobs()):
                for _ in range(turns):
                    await asyncio.sleep(0)
