"""The end-to-end tier: the real server as a subprocess (tests/support/server.py). Every test
here carries the `e2e` marker, so `-m "not e2e"` leaves the whole tier out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, Server, start_server, stop_server

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Called with the whole session's items, whichever conftest defines it: mark only ours.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("e2e")
    server = start_server(root / "data", root / "server.log", models=REPO / "models.yaml")
    yield server
    stop_server(server)
