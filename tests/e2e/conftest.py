"""The end-to-end tier: the real server as a subprocess (tests/support/server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import REPO, Server, start_server, stop_server


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    server = start_server(root / "data", root / "server.log", models=REPO / "models.yaml")
    yield server
    stop_server(server)
