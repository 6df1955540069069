"""Every cursor, id and pagination parameter a client sends is read defensively: whatever
it holds (too long, not ASCII, a NUL, a number past 64 bits, a float, a negative number,
a tampered cursor) the answer is a 4xx in OpenAI's envelope, never a 500.

A tampered output cursor (`after` of GET /v1/batches/{id}/output) whose number did not fit
in 64 bits passed decoding and failed when the next cursor was encoded: a 500."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.harness import Harness
from tests.support.lines import batch_line


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


HOSTILE = [
    "x" * 5000,  # too long for any id column
    "é✓漢字",  # not ASCII
    "\x00",  # a NUL: PostgreSQL cannot even compare text holding one
    "a\x00b",
    "\x1b[2J",
    "1" * 40,  # a number past 64 bits
    "99999999999999999999999999",
    "-1",
    "-99999999999999999999",
    "1e300",
    "NaN",
    "0x10",
    " ",
    "%",
    "file-" + "f" * 1000,
    _cursor('{"b": 123456789012345678901234567890, "r": {}}'),
    _cursor('{"b": 1e300, "r": {}}'),
    _cursor('{"b": -5, "r": {}}'),
    _cursor('{"b": 0, "r": {"1": "x"}}'),
    _cursor("[1, 2]"),
]

# (method, path, query parameter or None): `{v}` is the hostile value; `{batch}`, `{file}`,
# `{upload}` and `{endpoint}` are real objects, so that what is read after the id is reached.
ROUTES = [
    ("GET", "/v1/files", "after"),
    ("GET", "/v1/files", "limit"),
    ("GET", "/v1/files", "order"),
    ("GET", "/v1/files", "purpose"),
    ("GET", "/v1/files/{v}", None),
    ("GET", "/v1/files/{v}/content", None),
    ("DELETE", "/v1/files/{v}", None),
    ("GET", "/v1/batches", "after"),
    ("GET", "/v1/batches", "limit"),
    ("GET", "/v1/batches/{v}", None),
    ("POST", "/v1/batches/{v}/cancel", None),
    ("POST", "/v1/batches/{v}/retry", None),
    ("GET", "/v1/batches/{v}/output", None),
    ("GET", "/v1/batches/{batch}/output", "after"),
    ("GET", "/v1/batches/{batch}/output", "limit"),
    ("POST", "/v1/uploads/{v}/parts", None),
    ("POST", "/v1/uploads/{v}/complete", None),
    ("POST", "/v1/uploads/{upload}/complete", "part_ids"),
    ("POST", "/v1/uploads/{v}/cancel", None),
    ("GET", "/v1/models/{v}", None),
    ("GET", "/admin/webhooks/{v}", None),
    ("DELETE", "/admin/webhooks/{v}", None),
    ("POST", "/admin/webhooks/{v}/rotate", None),
    ("POST", "/admin/webhooks/{v}/enable", None),
    ("POST", "/admin/webhooks/{v}/test", None),
    ("GET", "/admin/webhooks/{v}/deliveries", None),
    ("GET", "/admin/webhooks/{endpoint}/deliveries", "limit"),
    ("POST", "/admin/keys/{v}/revoke", None),
    ("GET", "/admin/files/{v}/lines", None),
    ("GET", "/admin/files/{file}/lines", "cursor"),
    ("GET", "/admin/files/{file}/lines", "limit"),
    ("GET", "/admin/files/{file}/lines", "custom_id"),
]


async def _objects(harness: Harness) -> dict[str, str]:
    batch = await harness.run_batch([batch_line("a"), batch_line("b")])
    upload = (await harness.client.post("/v1/uploads", json={
        "bytes": 1, "filename": "x.txt", "mime_type": "text/plain",
        "purpose": "user_data"})).json()
    endpoint = (await harness.client.post("/admin/webhooks", json={
        "url": "https://example.com/hook"})).json()
    return {"batch": batch["id"], "file": batch["output_file_id"], "upload": upload["id"],
            "endpoint": endpoint["id"]}


def _request(method: str, path: str, param: str | None, value: str) -> dict[str, Any]:
    if param == "part_ids":
        return {"json": {"part_ids": [value]}}
    if param is not None:
        return {"params": {param: value}}
    if path.endswith("/parts"):
        return {"files": {"data": ("p", b"x")}}
    if path.endswith("/complete"):
        return {"json": {"part_ids": ["part_x"]}}
    return {}


@pytest.mark.parametrize(("method", "template", "param"), ROUTES,
                         ids=[f"{m} {p} {q or ''}" for m, p, q in ROUTES])
async def test_no_hostile_value_is_a_500(harness: Harness, method: str, template: str,
                                         param: str | None) -> None:
    objects = await _objects(harness)
    for value in HOSTILE:
        # An id goes into the path percent-encoded, as a client library would send it.
        path = template.format(v=quote(value, safe=""), **objects)
        response = await harness.client.request(method, path,
                                                **_request(method, path, param, value))
        assert response.status_code < 500, (value, response.status_code, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and error["type"], (value, error)


async def test_a_tampered_output_cursor_is_a_400_naming_after(harness: Harness) -> None:
    batch = await harness.run_batch([batch_line("a")])
    for after in HOSTILE:
        response = await harness.client.get(f"/v1/batches/{batch['id']}/output",
                                            params={"after": after})
        assert response.status_code == 400, (after, response.text)
        assert response.json()["error"]["param"] == "after", after
