"""A fake of the upstream engine's HTTP (engines/upstream_http.py's `Http`) that answers from
a function of an httpx.Request, as httpx's MockTransport does: tests write the server as a
function and see every request it was sent. A handler that raises an httpx transport error
(httpx.ConnectError) is a server that cannot be reached."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import httpx

from batchd.engines.upstream_http import Answer, Unreachable

Handler = Callable[[httpx.Request], httpx.Response]


class FakeHttp:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def _answer(self, url: str, body: bytes) -> httpx.Response:
        request = httpx.Request("POST", url, content=body,
                                headers={"content-type": "application/json"})
        try:
            return self.handler(request)
        except httpx.TransportError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    async def post(self, url: str, body: bytes) -> Answer:
        response = self._answer(url, body)
        return Answer(status=response.status_code, headers=response.headers,
                      body=response.read())

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: bytes) -> AsyncIterator[_Streamed]:
        yield _Streamed(self._answer(url, body))

    async def aclose(self) -> None:
        pass


class _Streamed:
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self._body = response.read()

    async def read(self) -> bytes:
        return self._body

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._body.splitlines(keepends=True):
            yield line
