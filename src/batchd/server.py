"""The uvicorn server batchd runs under, with the bounds on headers uvicorn lacks."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType

import httptools
import psutil
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: a quarter of a small request's CPU went to
    h11's pure-Python parsing), plus two bounds on a request's headers that uvicorn lacks:

    - time: uvicorn closes a connection idle between requests (keep-alive timeout) but waits
      forever once a byte of the next request has come, so a client dribbling header bytes
      (or sending half its headers and stopping) would hold a connection for good. The clock
      starts when the connection opens and again when a response is complete; it stops when
      the request's headers are all in. Body reads are bounded in the app (`BodyTimeout`).
    - size: llhttp sets none, and uvicorn keeps every header it is given, so a client could
      grow one connection's memory for as long as the clock runs. Past `header_limit` bytes
      (the URL and the headers) the request is refused with a 400 and the connection closed,
      as h11 refused past its 16 KiB."""

    header_timeout: float = 10.0
    header_limit: int = 64 * 1024

    _header_timer: asyncio.TimerHandle | None = None
    _awaiting_headers = False
    # A request's header block as llhttp hands it over (its URL and each finished header),
    # and the raw bytes of reads that began and ended inside it: httptools gathers a header
    # that has not ended in C and tells nobody, so only the raw count bounds one that never
    # ends. Neither counts a byte outside the block, so neither refuses a long body.
    _header_bytes = 0
    _raw_header_bytes = 0
    _in_headers = True  # a new connection's first bytes begin a request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        began_inside = self._in_headers
        super().data_received(data)
        if began_inside and self._in_headers and not self.transport.is_closing():
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.header_limit:
                self._refuse_headers()

    def on_message_begin(self) -> None:
        self._header_bytes = self._raw_header_bytes = 0
        self._in_headers = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The clock runs for the next request's headers only if none has come yet: a
        # pipelined request already parsed (now started, `self.cycle`) may take its time.
        if not self.transport.is_closing() and (self.cycle is None
                                                or self.cycle.response_complete):
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.header_limit:
            # Stops the parser; uvicorn answers a parser error with a 400 and closes.
            raise httptools.HttpParserCallbackError(
                f"request headers over {self.header_limit} bytes")

    def _refuse_headers(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.send_400_response("Request headers are too large.")  # and closes
        else:  # an earlier request's answer is under way: a 400 would land inside it
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._awaiting_headers = True
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        self._awaiting_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    return type("GuardedProtocol", (GuardedProtocol,), {"header_timeout": header_timeout})


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
