"""Whatever JSON a client sends to any route, with any strings in it (lone surrogates, NULs,
every plane), the answer is never a 5xx, and nothing stored makes a later listing fail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchd.app import create_app
from batchd.settings import Settings
from tests.support.harness import API_KEY
from tests.support.lines import ENDPOINT, INSTANT_MODELS

# Every code point, surrogates included (Hypothesis leaves them out unless asked).
text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "nul\x00here", "\U0010ffff", ""]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)

TEMPLATES: dict[str, dict[str, Any]] = {
    ENDPOINT: {"model": "instant-model", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4},
    "/v1/batches": {"input_file_id": "file-x", "endpoint": ENDPOINT,
                    "completion_window": "24h", "metadata": {"k": "v"}},
    "/admin/keys": {"name": "fuzzed", "owner": "fuzz-owner", "tier": "core"},
    "/v1/batches/batch_x/cancel": {},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("any-json")
    (root / "models.yaml").write_text(INSTANT_MODELS)
    config = Settings(data_dir=root / "data", models=root / "models.yaml", api_key=API_KEY,
                      embedded_worker=False)
    with TestClient(create_app(config), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


def replace_at(body: Any, path: list[int], value: Any) -> Any:
    """`body` with one of its values (chosen by `path`) replaced, or a field added."""
    if isinstance(body, dict) and body:
        keys = sorted(body)
        key = keys[path[0] % len(keys)] if path else keys[0]
        return {**body, key: replace_at(body[key], path[1:], value) if path[1:] else value}
    if isinstance(body, list) and body:
        index = path[0] % len(body) if path else 0
        copy = list(body)
        copy[index] = replace_at(body[index], path[1:], value) if path[1:] else value
        return copy
    return value


def check(client: TestClient, route: str, body: Any, *, ascii_only: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (route, body, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for listing in ("/v1/batches", "/v1/files", "/admin/keys"):
        assert client.get(listing).status_code == 200, (listing, route, body)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(sorted(TEMPLATES)),
       path=st.lists(st.integers(0, 7), min_size=1, max_size=4),
       value=json_values, ascii_only=st.booleans())
def test_any_value_anywhere_in_a_known_body(client: TestClient, route: str, path: list[int],
                                           value: Any, ascii_only: bool) -> None:
    check(client, route, replace_at(TEMPLATES[route], path, value), ascii_only=ascii_only)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(sorted(TEMPLATES)), name=text, value=json_values)
def test_any_extra_field(client: TestClient, route: str, name: str, value: Any) -> None:
    check(client, route, {**TEMPLATES[route], name: value}, ascii_only=True)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(sorted(TEMPLATES)), body=json_values)
def test_any_body_at_all(client: TestClient, route: str, body: Any) -> None:
    check(client, route, body, ascii_only=True)


@pytest.mark.parametrize("size", [1_000, 200_000])  # below and above LARGE_BODY_BYTES
def test_a_large_body_is_checked_and_handed_over_as_a_small_one(
    client: TestClient, size: int,
) -> None:
    # Over 64 KB a body is parsed on a preparation thread and handed to FastAPI parsed: the
    # same refusals, the same parameter names, the same answer either way.
    padding = "x" * size
    bad = ('{"model": "instant-model", "messages": [{"role": "user", "content": "'
           + padding + '\\ud800"}]}')
    refused = client.post("/v1/chat/completions", content=bad.encode(),
                          headers={"content-type": "application/json"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "messages[0].content"
    fine = client.post("/v1/chat/completions", json={
        "model": "instant-model", "messages": [{"role": "user", "content": padding}],
        "max_tokens": 2})
    assert fine.status_code == 200, fine.text
