"""What counts as a backend outage (a 503, a pause) and what stays a bug (a 500 with its
traceback)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from batchd.backends import outage


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
    OSError(errno.EHOSTUNREACH, "No route to host"),
    OSError(errno.ENETUNREACH, "Network is unreachable"),
    OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
            "[Errno 111] Connect call failed ('127.0.0.1', 5432)"),
    TimeoutError(),
    PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")),
])
def test_outages(exc: BaseException) -> None:
    assert outage(exc) is not None


@pytest.mark.parametrize("exc", [
    OperationalError("SELECT x", {}, sqlite3.OperationalError("no such table: x")),
    OperationalError("SELEC", {}, sqlite3.OperationalError('near "SELEC": syntax error')),
    ProgrammingError("SELECT", {}, Exception("bad parameter")),
    FileNotFoundError(errno.ENOENT, "No such file"),
    ValueError("a bug"),
])
def test_bugs_are_not_outages(exc: BaseException) -> None:
    assert outage(exc) is None
