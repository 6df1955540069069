"""The uvicorn server batchd runs under, with the connection timeouts uvicorn lacks."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType

import h11
import psutil
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class CleanExitServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process dies by the
    signal (exit status -15). For batchd a graceful stop is a success: it exits 0 instead.
    `on_exit` is told at the signal (the readiness probe starts failing at once)."""

    def __init__(self, config: uvicorn.Config, *,
                 on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._on_exit is not None:
            self._on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {sig: signal.signal(sig, self.handle_exit)
                     for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a limit on how long a client may take to send a request's
    headers. uvicorn closes a connection idle between requests (keep-alive timeout) but waits
    forever once a byte of the next request has come: a client dribbling header bytes (or
    sending half its headers and stopping) would hold a connection for good.

    The clock starts when the connection opens and again when a response is complete; it stops
    when the request's headers are all in. Body reads are bounded in the app (`BodyTimeout`)."""

    header_timeout: float = 10.0

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[H11Protocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})


class PortUnavailable(Exception):
    """The address cannot be listened on; the message says why and what to do."""


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything else starts, so that a port in use
    is one clear line (naming the process that holds it, when it can be seen) instead of
    uvicorn's error after the whole application has started."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise PortUnavailable(f"cannot listen on {host!r}: {exc.strerror}; set --host or "
                              "BATCHD_HOST to an address of this machine") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            holder = _listener_of(port)
            raise PortUnavailable(
                f"port {port} on {host} is already in use{f' by {holder}' if holder else ''}; "
                "choose another with --port or BATCHD_PORT") from exc
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _listener_of(port: int) -> str | None:
    """'process 1234 (python -m http.server)' for whoever listens on `port`, if visible."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                    and conn.pid:
                process = psutil.Process(conn.pid)
                command = " ".join(process.cmdline()[:4]) or process.name()
                return f"process {conn.pid} ({command})"
    except (psutil.Error, OSError):
        pass
    return None
