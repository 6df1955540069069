"""The floor plan: every import in `src/batchd` runs down (or across a floor), never up, and no
modules import each other in a circle. Lazy imports inside functions and imports under
`TYPE_CHECKING` count too: a circle hidden in a method is still a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "batchd"

# Floors from the ground up. A module stands on the floor of the longest prefix listed for it;
# it may import from its own floor and those below.
FLOORS: list[tuple[str, ...]] = [
    # Shared by everything: errors, ids, time, settings and small tools with no batchd imports.
    ("batchd", "batchd.errors", "batchd.ids", "batchd.clock", "batchd.settings",
     "batchd.shielding", "batchd.log_redaction", "batchd.config_problems", "batchd.line_reader",
     "batchd.read_budget"),
    # The OpenAI wire formats, in engine-neutral terms (as vLLM keeps its protocol and
    # `SamplingParams` below its engine).
    ("batchd.openai",),
    # Limits that engines and services apply (rates, tiers, preparation threads).
    ("batchd.limits",),
    ("batchd.engines",),
    # Serving: one request through an engine to OpenAI's answer; shared by the API and worker.
    ("batchd.serving",),
    # Durable state: records, the metadata store, blobs; what opens them, and the probes
    # that check they answer.
    ("batchd.store", "batchd.metrics", "batchd.backends", "batchd.probes"),
    # Services over the store: files, uploads, keys, batches, webhooks, usage and costs, and
    # estimates of what a file would cost and take.
    ("batchd.files", "batchd.upload_stream", "batchd.uploads", "batchd.keys", "batchd.batches",
     "batchd.webhooks", "batchd.usage", "batchd.estimates"),
    ("batchd.worker",),
    # Faces: HTTP (speaking only to services), then the wiring, the server (and the event loop
    # it and the worker run on, and how their processes collect garbage) and the CLI.
    ("batchd.api", "batchd.console"),
    ("batchd.app",),
    ("batchd.server", "batchd.event_loop", "batchd.garbage"),
    ("batchd.cli", "batchd.__main__"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCE.rglob("*.py")}


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """The batchd modules `module` imports, each with the line that imports it."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                target = submodule if submodule in MODULES else node.module
                yield target, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    return {module: {target for target, _ in _imports(module)
                     if target in MODULES and target != module}
            for module in MODULES}


def _placing(module: str) -> tuple[int, str]:
    """The floor `module` stands on, and the prefix that puts it there."""
    best, floor = "", -1
    for number, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, floor = prefix, number
    return floor, best


def floor_of(module: str) -> int:
    return _placing(module)[0]


def test_every_module_has_a_floor() -> None:
    """A new module is placed on purpose, not by falling through to the ground floor."""
    unplaced = [m for m in MODULES if not m.startswith("batchd.client")
                and _placing(m)[1] == "batchd" and m != "batchd"]
    assert not unplaced, f"add these to FLOORS: {unplaced}"


def test_no_import_runs_up_a_floor() -> None:
    upward = []
    for module in MODULES:
        if module.startswith("batchd.client"):
            continue
        for target, line in _imports(module):
            if target in MODULES and target != "batchd" and floor_of(target) > floor_of(module):
                upward.append(f"{MODULES[module].relative_to(SOURCE.parent)}:{line} imports "
                              f"{target}")
    assert not upward, "imports that run up a floor:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = _graph()
    circles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_no_packages_import_each_other() -> None:
    """Folders too: `files.py` once took a schema from `batches/`, which imported `files` back."""
    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2])

    arrows = {(package(a), package(b)) for a, targets in _graph().items() for b in targets
              if package(a) != package(b)}
    loops = sorted({tuple(sorted(pair)) for pair in arrows if pair[::-1] in arrows})
    assert not loops, f"packages that import each other: {loops}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("batchd.client")))
def test_the_client_imports_nothing_of_the_server(module: str) -> None:
    """`batchd.client` talks to any batchd over HTTP: it must not need the server's code."""
    server_imports = [t for t, _ in _imports(module)
                      if t.startswith("batchd") and not t.startswith("batchd.client")
                      and t != "batchd"]
    assert not server_imports, server_imports


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
