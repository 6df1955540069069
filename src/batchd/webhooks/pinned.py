"""An HTTP client that connects only to the addresses it checked.

Checking a name's addresses and then letting the HTTP client resolve it again leaves a gap: the
name's DNS may answer a public address to the check and 127.0.0.1 to the connection (DNS
rebinding). Here the name is resolved once, inside the connection itself: every address is
checked, then the socket is opened to one of those very addresses. The connection pool, the
Host header and TLS (SNI and the certificate check) still use the URL's host name, because
only the network backend under httpcore's pool is replaced.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from batchd.webhooks.addresses import IPAddress, is_public, literal_address

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

NOT_PUBLIC = "the address is not public"


class AddressNotPublic(Exception):
    """The host has an address that is not public (the addresses themselves are left out:
    the message is shown to the tenant, who must not learn what internal names resolve to)."""

    def __init__(self) -> None:
        super().__init__(NOT_PUBLIC)


class ConnectFailed(httpcore.ConnectError):
    """A connection could not be made; its message names no address, so the tenant may see
    it."""


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of `host`, as the system resolver answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, refuses a host with any address that is not public (while `checking()`
    says so: an allow-list means the operator trusts its hosts wherever they resolve), and
    connects to the checked addresses, in the resolver's order."""

    def __init__(self, *, checking: Callable[[], bool], resolver: Resolver = resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._checking, self._resolve = checking, resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        literal = literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise ConnectFailed("the host name does not resolve") from exc
            if not addresses:
                raise ConnectFailed("the host name does not resolve")
        if self._checking() and not all(is_public(a) for a in addresses):
            raise AddressNotPublic
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        # Said without the address: with an allow-list it may be an internal one.
        raise ConnectFailed(f"could not connect ({os_reason(failure)})") from failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise ConnectFailed("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def os_reason(exc: BaseException | None) -> str:
    """The operating system's words for why `exc` happened ("Connection refused"), found in
    its causes; never an address or a name."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        code = current.errno if isinstance(current, OSError) else None
        if code is not None and code in errno.errorcode:
            return os.strerror(code)
        pending.extend([current.__cause__, current.__context__,
                        *getattr(current, "exceptions", ())])
    return "connection failed"


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that uses `backend`. httpx has no parameter
    for a network backend yet (encode/httpx#3180), so the pool it built is replaced by one
    built the same way (httpcore's public constructor) with the backend added."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20,
                              keepalive_expiry=5.0)  # httpx's defaults
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=backend)
