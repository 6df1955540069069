"""The upstream engine's HTTP: POSTs of JSON to OpenAI-compatible servers, answered whole or
streamed as server-sent lines, over one aiohttp session of keep-alive connections.

Why aiohttp and not httpx (which the rest of batchd uses): measured side by side against a
simulated 512-slot server (bench/upstream.py's), 6,000 requests 512 at a time, httpx spent
23 ms of CPU a request in its connection pool (encode/httpcore#1035; sharding it into
clients of 8 connections, as this engine once did, still left ~2 ms a request in batchd),
aiohttp 0.4 ms, and a hand-written HTTP/1.1 client 0.15 ms. A GPU node answers thousands of
short requests a second: the client must not be what limits it.

Why not a Rust client (measured 2026-12-06 with a one-off script, not kept: those clients are
not dependencies; each client alone in a fresh process on uvloop against bench/upstream.py's
simulated server, 8,000 requests 512 at a time, the same body and headers, alternated):
aiohttp 0.43-0.53 ms of CPU a request, pyreqwest 0.22-0.25, rnet 0.31-0.41, pyqwest
0.42-0.50, the hand-written client 0.14. pyreqwest took
batchd's whole CPU a request from 0.86-0.98 to 0.67-0.78 ms, but a cancelled request kept its
connection open until the server answered (even after the client was closed): a GPU server
would go on generating for a batch that was cancelled, so it fails the engine's cancellation
(tests/unit/test_upstream_http.py's cancel test is what it failed). rnet cancels, but saves
~0.1 ms and is built for impersonating browsers; pyqwest cancels and saves nothing.
curl_cffi (libcurl; measured 2026-12-07 the same way, the simulated server at 512 slots and
0.2 s a request, 3 alternated rounds) spent 0.22-0.23 ms of CPU a request against aiohttp's
0.12-0.13.

`Http` is what the engine needs; tests give it a fake (tests/support/fake_http.py) that
answers from a function, as httpx's MockTransport did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.helpers import basicauth_from_netrc, get_env_proxy_for_url, netrc_from_env
from yarl import URL


class Unreachable(Exception):
    """The request did not get an answer: refused, reset, timed out, or cut off mid-way."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive keys
    body: bytes


class StreamedAnswer(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[bytes]: ...


class Http(Protocol):
    async def post(self, url: str, body: bytes) -> Answer: ...

    def stream(self, url: str, body: bytes) -> contextlib.AbstractAsyncContextManager[
        StreamedAnswer]: ...

    async def aclose(self) -> None: ...


# Server-sent lines can carry a whole chunk with its logprobs: room for long ones.
READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class _Route:
    """How requests reach one server: through which proxy, with which headers."""

    # Every request's headers: the configured ones (the key's Authorization), else ~/.netrc's
    # Authorization; and Proxy-Authorization for plain HTTP through a proxy that wants it.
    headers: Mapping[str, str]
    proxy: URL | None = None
    # For a tunnel's CONNECT (an https server through a proxy): its Proxy-Authorization.
    proxy_headers: Mapping[str, str] | None = None


def _route_of(origin: URL, headers: Mapping[str, str], *, keyed: bool) -> _Route:
    """HTTP(S)_PROXY, NO_PROXY and ~/.netrc for one server, as httpx's `trust_env` read
    them (blocking: it may read files)."""
    try:
        proxy, proxy_auth = get_env_proxy_for_url(origin)
    except LookupError:  # none set, or NO_PROXY names the host
        proxy, proxy_auth = None, None
    sent = dict(headers)
    if not keyed and origin.host is not None:
        with contextlib.suppress(LookupError):
            auth = basicauth_from_netrc(netrc_from_env(), origin.host)
            sent["Authorization"] = auth.encode()
    proxy_headers = None
    if proxy_auth is not None:
        # aiohttp deprecates `proxy_auth`, and its `proxy_headers` reach only a tunnel's
        # CONNECT: a plain-HTTP request to a proxy carries Proxy-Authorization itself.
        said = {"Proxy-Authorization": proxy_auth.encode()}
        if origin.scheme == "https":
            proxy_headers = said
        else:
            sent.update(said)
    return _Route(headers=sent, proxy=proxy, proxy_headers=proxy_headers)


class AiohttpHttp:
    """One session for every server of an engine, made on first use (inside the loop).

    The environment's proxies and ~/.netrc are read once per server, at its first request,
    not by aiohttp's `trust_env` for every request: that ran two lookups on a thread per
    request, a quarter of batchd's CPU per upstream request at 512 in flight (profiled)."""

    def __init__(self, *, headers: Mapping[str, str], timeout_seconds: float) -> None:
        self._headers = {"content-type": "application/json", **headers}
        # As httpx's were: a limit on each wait for data, not on the whole answer (a long
        # stream that keeps coming is not cut off).
        self._timeout = aiohttp.ClientTimeout(total=None, connect=10,
                                              sock_read=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._keyed = any(name.lower() == "authorization" for name in headers)
        # By URL (a few: each server's endpoints), parsed once, with its server's route.
        self._routes: dict[str, tuple[URL, _Route]] = {}
        self._route_lock = asyncio.Lock()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cap of its own: the engine's adaptive limits decide what is in flight.
            # No default headers: aiohttp starts a proxy's headers from them, and would send
            # the key's Authorization to the proxy as Proxy-Authorization. Each request
            # carries its route's.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=self._timeout, read_bufsize=READ_BUFFER,
                # HTTP(S)_PROXY / NO_PROXY are honoured, as with httpx, by `_route`.
                auto_decompress=True, trust_env=False)
        return self._session

    async def _route(self, url: str) -> tuple[URL, _Route]:
        known = self._routes.get(url)
        if known is None:
            async with self._route_lock:
                known = self._routes.get(url)
                if known is None:
                    where = URL(url)
                    route = await asyncio.to_thread(_route_of, where.origin(),
                                                    self._headers, keyed=self._keyed)
                    known = self._routes[url] = (where, route)
        return known

    async def _post(self, url: str, body: bytes,
                    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        where, route = await self._route(url)
        return self._client().post(where, data=_payload(body), proxy=route.proxy,
                                   proxy_headers=route.proxy_headers, headers=route.headers)

    async def post(self, url: str, body: bytes) -> Answer:
        try:
            async with await self._post(url, body) as response:
                return Answer(status=response.status, headers=response.headers,
                              body=await response.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: bytes) -> AsyncIterator[StreamedAnswer]:
        try:
            async with await self._post(url, body) as response:
                yield _Streamed(response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _payload(body: bytes) -> aiohttp.BytesPayload:
    # Ready-made: aiohttp would otherwise look the body's type up in its payload registry
    # for every request (a few percent of the CPU of a short request, profiled).
    return aiohttp.BytesPayload(body, content_type="application/json")


class _Streamed:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self._response.read()

    async def lines(self) -> AsyncIterator[bytes]:
        async for line in self._response.content:
            yield line
