"""The upstream engine's HTTP client on real sockets: the environment's proxies, NO_PROXY and
~/.netrc are honoured as httpx's `trust_env` honoured them, read once per server; and what the
engine relies on from the client: lines however chunks cut them, headers by any case, a
compressed answer opened, and every way of getting no answer (refused, silent, cancelled)
told apart from an answer."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from batchd.engines.upstream_http import AiohttpHttp, Unreachable

pytestmark = pytest.mark.backend_independent


async def _serve(name: str) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A server that answers who it is and what it was sent; yields its origin and the
    requests it saw (the request line's target and the Authorization header)."""
    seen: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({"target": request.raw_path,
                     "authorization": request.headers.get("Authorization", ""),
                     "proxy": request.headers.get("Proxy-Authorization", "")})
        return web.json_response({"server": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    async for server in _serve("upstream"):
        yield server


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    async for server in _serve("proxy"):
        yield server


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


async def _who(http: AiohttpHttp, url: str) -> str:
    try:
        answer = await http.post(url, b"{}")
    finally:
        await http.aclose()
    server: str = orjson.loads(answer.body)["server"]
    return server


async def test_a_direct_request_without_proxies(upstream: tuple[str, list[dict[str, str]]]
                                                ) -> None:
    origin, seen = upstream
    assert await _who(AiohttpHttp(headers={}, timeout_seconds=10),
                      f"{origin}/v1/chat/completions") == "upstream"
    assert seen == [{"target": "/v1/chat/completions", "authorization": "", "proxy": ""}]


async def test_requests_go_through_the_environments_proxy(
        upstream: tuple[str, list[dict[str, str]]], proxy: tuple[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy[0])
    http = AiohttpHttp(headers={"Authorization": "Bearer k"}, timeout_seconds=10)
    url = f"{upstream[0]}/v1/chat/completions"
    assert await _who(http, url) == "proxy"
    assert proxy[1][0]["target"] == url  # a proxy's request line: the whole URL
    # The key is the server's (forwarded as Authorization), never the proxy's credentials.
    assert proxy[1][0]["authorization"] == "Bearer k" and proxy[1][0]["proxy"] == ""
    assert upstream[1] == []


async def test_no_proxy_sends_its_hosts_directly(
        upstream: tuple[str, list[dict[str, str]]], proxy: tuple[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy[0])
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await _who(AiohttpHttp(headers={}, timeout_seconds=10),
                      f"{upstream[0]}/v1/chat/completions") == "upstream"
    assert proxy[1] == []


async def test_netrc_credentials_are_sent_unless_a_key_is_configured(
        upstream: tuple[str, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    origin, seen = upstream
    await _who(AiohttpHttp(headers={}, timeout_seconds=10), f"{origin}/v1/models")
    await _who(AiohttpHttp(headers={"Authorization": "Bearer k"}, timeout_seconds=10),
               f"{origin}/v1/models")
    assert [s["authorization"] for s in seen] == ["Basic YWxpY2U6c2VjcmV0", "Bearer k"]


async def test_the_environment_is_read_once_per_server(
        upstream: tuple[str, list[dict[str, str]]], proxy: tuple[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    http = AiohttpHttp(headers={}, timeout_seconds=10)
    url = f"{upstream[0]}/v1/chat/completions"
    try:
        await http.post(url, b"{}")
        monkeypatch.setenv("HTTP_PROXY", proxy[0])  # too late for this client
        await http.post(url, b"{}")
    finally:
        await http.aclose()
    assert len(upstream[1]) == 2 and proxy[1] == []


async def test_a_proxys_credentials_in_its_url_are_sent_to_it_alone(
        upstream: tuple[str, list[dict[str, str]]], proxy: tuple[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy[0].replace("http://", "http://bob:p%40ss@"))
    for headers in ({}, {"Authorization": "Bearer k"}):
        assert await _who(AiohttpHttp(headers=headers, timeout_seconds=10),
                          f"{upstream[0]}/v1/chat/completions") == "proxy"
    assert [(s["proxy"], s["authorization"]) for s in proxy[1]] == [
        ("Basic Ym9iOnBAc3M=", ""), ("Basic Ym9iOnBAc3M=", "Bearer k")]  # bob:p@ss


@contextlib.asynccontextmanager
async def _raw_server(answer: bytes | None, closed: asyncio.Event | None = None,
                      received: asyncio.Event | None = None,
                      heads: list[bytes] | None = None) -> AsyncIterator[str]:
    """A server that reads one request's head (kept in `heads`, and `received` set) and then
    sends `answer` in pieces of 7 bytes (or, with None, nothing: it waits until the client
    goes, and sets `closed`); yields a URL on it, and closes every connection it holds on
    leaving."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if heads is not None:
                heads.append(head)
            if received is not None:
                received.set()
            if answer is None:
                while await reader.read(1024):
                    pass
                if closed is not None:
                    closed.set()
            else:
                for start in range(0, len(answer), 7):
                    writer.write(answer[start:start + 7])
                    await writer.drain()
                    await asyncio.sleep(0)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_tunnel_to_an_https_server_takes_the_proxys_credentials_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CONNECT carries Proxy-Authorization and nothing of the key, which goes only inside
    the tunnel (this proxy refuses the tunnel: the request is unreachable)."""
    heads: list[bytes] = []
    http = AiohttpHttp(headers={"Authorization": "Bearer k"}, timeout_seconds=10)
    async with _raw_server(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
                           heads=heads) as url:
        monkeypatch.setenv("HTTPS_PROXY", url.replace("http://", "http://bob:p%40ss@"))
        try:
            with pytest.raises(Unreachable):
                await http.post("https://gpu.example:8443/v1/chat/completions", b"{}")
        finally:
            await http.aclose()
    request_line, *lines = heads[0].decode().strip().split("\r\n")
    assert request_line.startswith("CONNECT gpu.example:8443 ")
    said = {name.lower(): value for name, _, value in (h.partition(": ") for h in lines)}
    assert said["proxy-authorization"] == "Basic Ym9iOnBAc3M="
    assert "authorization" not in said and "Bearer" not in heads[0].decode()


async def test_streamed_lines_come_whole_however_the_chunks_cut_them() -> None:
    events = b"data: {\"a\": 1}\n\ndata: {\"b\": 2}\n\ndata: [DONE]\n\n"
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(events[i:i + 5]), events[i:i + 5])
                    for i in range(0, len(events), 5)) + b"0\r\n\r\n"
    http = AiohttpHttp(headers={}, timeout_seconds=10)
    async with _raw_server(head + body) as url:
        try:
            async with http.stream(url, b"{}") as response:
                assert response.status == 200
                lines = [line async for line in response.lines()]
        finally:
            await http.aclose()
    assert lines == [b'data: {"a": 1}\n', b"\n", b'data: {"b": 2}\n', b"\n",
                     b"data: [DONE]\n", b"\n"]


async def test_headers_are_read_by_any_case_and_a_compressed_answer_is_opened() -> None:
    body = gzip.compress(b'{"error": "busy"}')
    http = AiohttpHttp(headers={}, timeout_seconds=10)
    async with _raw_server(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)) as url:
        try:
            answer = await http.post(url, b"{}")
        finally:
            await http.aclose()
    assert answer.status == 429
    assert answer.headers.get("retry-after") == answer.headers["Retry-After"] == "3"
    assert orjson.loads(answer.body) == {"error": "busy"}


async def test_a_refused_connection_and_a_silent_server_are_unreachable() -> None:
    async with _raw_server(None) as url:
        pass  # nobody listens there now
    http = AiohttpHttp(headers={}, timeout_seconds=0.5)
    try:
        with pytest.raises(Unreachable, match=r"(?i)connect"):
            await http.post(url, b"{}")
        async with _raw_server(None) as silent:
            started = time.monotonic()
            with pytest.raises(Unreachable, match="Timeout"):
                await http.post(silent, b"{}")
            assert time.monotonic() - started < 5
            with pytest.raises(Unreachable, match="Timeout"):
                async with http.stream(silent, b"{}"):
                    pass
    finally:
        await http.aclose()


async def test_a_cancelled_request_closes_its_connection() -> None:
    """So a GPU server stops generating what nobody will read (vLLM aborts a request whose
    client went), and no connection is left waiting."""
    closed, received = asyncio.Event(), asyncio.Event()
    http = AiohttpHttp(headers={}, timeout_seconds=60)
    async with _raw_server(None, closed, received) as url:
        try:
            sending = asyncio.create_task(http.post(url, b"{}"))
            await asyncio.wait_for(received.wait(), 10)  # the request is at the server
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            await asyncio.wait_for(closed.wait(), 5)  # the server saw the client go
        finally:
            await http.aclose()
