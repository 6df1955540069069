"""Free ports, and waiting for something to listen on one."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice; free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ReservedPort:
    """A port kept for a server that starts later. `free_port`'s port is free only until
    someone binds it, and over minutes someone may: another test, or an outgoing connection
    the kernel gives that port as its own (which, aimed at the port itself, even connects to
    itself). This one is bound but not listening: connections to it are refused, as to a
    server that is down, and the kernel gives it to nobody else. `release` it just before the
    late server binds it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])

    def release(self) -> None:
        self._sock.close()


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def wait_for_http(url: str, *, timeout: float = 60,
                  process: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll `url` until it answers 200; False on timeout or if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False
