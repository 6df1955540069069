"""api/ only speaks HTTP: its routes parse, call a service and shape the answer; none of
them imports the store or reaches for it through the services. Read from the source, so that
the rule holds for routes no test calls."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import batchd.api

API = Path(batchd.api.__file__).parent
STORE = "batchd.store"
# The plain records that services hand back, and that routes shape into answers.
RECORDS = "batchd.store.records"
# The one module left out: the services container, which app.py fills. It names the store's
# type for the wiring and the worker, and holds no route.
CONTAINER = API / "state.py"
# Services attributes that are the store itself (metadata and blobs).
STORE_ATTRIBUTES = {"store", "blobs"}


def _imported(tree: ast.Module, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every module and name imported, relative imports resolved
    against `package`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:  # `from batchd import store`
                yield node.lineno, f"{module}.{alias.name}"


def _under(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def _is_store(name: str) -> bool:
    return _under(name, STORE) and not _under(name, RECORDS)


def store_uses(source: str, *, package: str = "batchd.api") -> list[str]:
    """What in `source` imports the store or reads it off the services."""
    tree = ast.parse(source)
    found = {(line, f"imports {name}") for line, name in _imported(tree, package)
             if _is_store(name)}
    found |= {(node.lineno, f"reads .{node.attr}") for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr in STORE_ATTRIBUTES}
    return [f"line {line}: {what}" for line, what in sorted(found)]


def api_modules() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if p != CONTAINER)


@pytest.mark.parametrize("path", api_modules(), ids=lambda p: str(p.relative_to(API)))
def test_api_modules_call_services_not_the_store(path: Path) -> None:
    assert store_uses(path.read_text()) == []


def test_every_api_module_is_scanned() -> None:
    names = {p.name for p in api_modules()}
    assert {"batches.py", "webhooks.py", "metrics.py", "console.py"} <= names
    assert "state.py" not in names


@pytest.mark.parametrize("source", [
    "from batchd.store.metadata import MetadataStore",
    "import batchd.store.sql",
    "from batchd import store",
    "from ..store.webhooks import TooManyTestEvents",
    "async def f(svc):\n    return await svc.store.get_batch('b', owner=None)",
    "def f(svc):\n    return svc.blobs.read_range('k')",
    "def f(request):\n    return services(request).store",
])
def test_the_scan_finds_the_store(source: str) -> None:
    assert store_uses(source)


@pytest.mark.parametrize("source", [
    "from batchd.store.records import ApiKey",
    "from batchd.storehouse import x",
    "from batchd.api.state import services",
    "async def f(svc):\n    return await svc.batches.get(owner=None, batch_id='b')",
])
def test_the_scan_lets_records_and_services_through(source: str) -> None:
    assert store_uses(source) == []
