"""Property-based requests generated from batchd's own OpenAPI document: never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.lines import INSTANT_MODELS
from tests.support.server import start_server, stop_server

AUTH = {}
BASE = {}


def with_lone_surrogate(body: Any) -> Any | None:
    """`body` with a lone surrogate added to its first string value; None if it has none."""
    if isinstance(body, str):
        return body + "\ud800"
    items = body.items() if isinstance(body, dict) else enumerate(body) \
        if isinstance(body, list) else ()
    for key, value in items:
        poisoned = with_lone_surrogate(value)
        if poisoned is not None:
            copy = dict(body) if isinstance(body, dict) else list(body)
            copy[key] = poisoned
            return copy
    return None


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    root = tmp_path_factory.mktemp("schemathesis")
    (root / "models.yaml").write_text(INSTANT_MODELS)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml")
    AUTH["Authorization"] = f"Bearer {server.api_key}"
    base = server.base_url.removesuffix("/v1")
    BASE["url"] = base
    try:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")
    finally:
        stop_server(server)


def test_no_request_gets_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    # schemathesis' pytest plugin does not work with pytest 9 yet: drive each operation's
    # Hypothesis strategy directly instead.
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(headers=AUTH, timeout=30)
            assert response.status_code < 500, (case.method, case.formatted_path,
                                                 response.text)
            if response.status_code >= 400:  # every error is the OpenAI envelope
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            # The same request with a string that is not Unicode: a 400 naming where it is.
            poisoned = with_lone_surrogate(case.body) if case.media_type == "application/json" \
                else None
            if poisoned is not None:
                answer = httpx.request(
                    case.method, BASE["url"] + case.formatted_path, params=case.query,
                    content=json.dumps(poisoned).encode(), timeout=30,
                    headers={**AUTH, "content-type": "application/json"})
                assert answer.status_code < 500, (case.method, case.formatted_path, answer.text)
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}

        no_server_error()
        checked.append(operation.label)
    assert len(checked) >= 12, checked
    assert {"POST /v1/responses", "POST /v1/embeddings", "POST /v1/completions",
            "POST /v1/chat/completions", "POST /v1/uploads"} <= set(checked), checked
