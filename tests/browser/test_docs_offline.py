"""/docs and /redoc render every operation on a machine without internet: their scripts,
styles and icon come from the installed package, never a CDN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import OfflinePage
from tests.support.lines import INSTANT_MODELS
from tests.support.server import Server, start_server, stop_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("docs")
    (root / "models.yaml").write_text(INSTANT_MODELS)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml")
    yield server
    stop_server(server)


def open_offline(offline: OfflinePage, url: str, ready: str) -> list[str]:
    """Load `url` until `ready` shows; returns the requests that failed in the browser."""
    failed: list[str] = []
    offline.page.on("requestfailed", lambda request: failed.append(request.url))
    offline.page.goto(url)
    offline.page.wait_for_selector(ready, timeout=20_000)
    return failed


def test_swagger_ui_renders_the_operations_offline(server: Server,
                                                   offline_page: OfflinePage) -> None:
    failed = open_offline(offline_page, server.base_url.removesuffix("/v1") + "/docs",
                          ".opblock")
    paths = [p.strip() for p in offline_page.page.locator(".opblock-summary-path")
             .all_inner_texts()]
    assert "/v1/batches" in paths and "/v1/chat/completions" in paths
    assert offline_page.blocked == [] and failed == []


def test_redoc_renders_the_operations_offline(server: Server,
                                              offline_page: OfflinePage) -> None:
    root = server.base_url.removesuffix("/v1")
    failed = open_offline(offline_page, root + "/redoc", "[data-section-id^='tag/batches']")
    assert offline_page.page.get_by_text("Create Batch").count() >= 1
    # The bundle's "powered by" image points at redoc's CDN: the page's policy stops it in
    # the browser (a failed request), so it never reaches the network. Every local asset loads.
    assert offline_page.blocked == []
    assert [url for url in failed if url.startswith(root)] == []
