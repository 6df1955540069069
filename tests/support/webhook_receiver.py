"""A webhook receiver for tests: a real HTTP server on a free port that records what it gets
and answers as told (a status, a redirect, a delay), over TLS when given a context; and a
receiver that never answers at all."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    received: list[Received] = field(default_factory=list)
    status: int = 200
    location: str | None = None
    delay: float = 0.0
    scheme: str = "http"
    # Requests being answered at once, by path and by each folder above it ("/hooks/a/1"
    # counts for "/hooks" and "/hooks/a" too): now, and the most seen.
    in_flight: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/hooks"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@contextmanager
def receiving(port: int = 0, *, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(port=port, scheme="https" if tls else "http")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            parts = self.path.split("/")
            paths = ["/".join(parts[:n]) for n in range(2, len(parts) + 1)]
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                for path in paths:
                    now = receiver.in_flight[path] = receiver.in_flight.get(path, 0) + 1
                    receiver.peak[path] = max(receiver.peak.get(path, 0), now)
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                for path in paths:
                    receiver.in_flight[path] -= 1
            self.send_response(receiver.status)
            if receiver.location:
                self.send_header("location", receiver.location)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def silent() -> Iterator[str]:
    """The URL of a receiver that takes connections (the kernel's backlog accepts them) and
    never answers: every delivery to it waits for its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/never"
