"""The upstream engine's HTTP client on real sockets: the environment's proxies, NO_PROXY and
~/.netrc are honoured as httpx's `trust_env` honoured them, read once per server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from batchd.engines.upstream_http import AiohttpHttp

pytestmark = pytest.mark.backend_independent


async def _serve(name: str) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A server that answers who it is and what it was sent; yields its origin and the
    requests it saw (the request line's target and the Authorization header)."""
    seen: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({"target": request.raw_path,
                     "authorization": request.headers.get("Authorization", "")})
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
    assert seen == [{"target": "/v1/chat/completions", "authorization": ""}]


async def test_requests_go_through_the_environments_proxy(
        upstream: tuple[str, list[dict[str, str]]], proxy: tuple[str, list[dict[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy[0])
    http = AiohttpHttp(headers={}, timeout_seconds=10)
    url = f"{upstream[0]}/v1/chat/completions"
    assert await _who(http, url) == "proxy"
    assert proxy[1][0]["target"] == url  # a proxy's request line: the whole URL
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
