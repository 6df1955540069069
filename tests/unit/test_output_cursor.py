"""The output cursor (`after` of GET /v1/batches/{id}/output) comes back from clients: any
token a client can send decodes to a frontier that encodes again, or is a 400 naming
`after` (a number past 64 bits used to pass decoding and fail in `encode` with a 500)."""

from __future__ import annotations

import base64
import json

import pytest

from batchd.batches.partial import Frontier
from batchd.errors import InvalidRequest


def token(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def raw_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


TAMPERED = [
    token({"b": 123456789012345678901234567890, "r": {}}),  # the reported one
    raw_token('{"b": 123456789012345678901234567890, "r": {}}'),
    raw_token('{"b": 1e300, "r": {}}'),
    raw_token('{"b": 0, "r": {"1": 1e300}}'),
    raw_token('{"b": 0, "r": {"1": 99999999999999999999999999}}'),
    token({"b": -1, "r": {}}),
    token({"b": 0, "r": {"-1": 1}}),
    token({"b": 0, "r": {"1": -1}}),
    token({"b": 2**63, "r": {}}),
    token({"b": 2**53 + 1, "r": {}}),
    token({"b": 1.5, "r": {}}),
    token({"b": 2.0, "r": {}}),
    token({"b": True, "r": {}}),
    token({"b": "1", "r": {}}),
    token({"b": None, "r": {}}),
    token({"b": [], "r": {}}),
    token({"b": 0, "r": []}),
    token({"b": 0, "r": None}),
    token({"b": 0, "r": {"x": 1}}),
    token({"b": 0, "r": {"01": 1}}),
    token({"b": 0, "r": {" 1": 1}}),
    token({"b": 0, "r": {"1" * 40: 1}}),
    token({"b": 0, "r": {"\u0661": 1}}),  # an Arabic-Indic one: int() would take it
    token({"b": 0, "r": {"1": "1"}}),
    token({"b": 0, "r": {"1": True}}),
    token({"b": 0}),
    token({"r": {}}),
    token({"b": 0, "r": {}, "x": 1}),
    token([0, {}]),
    token(0),
    token("b"),
    token(None),
    token(b"\xff\xfe not json"),
    "!!!!",
    "a",
    "é✓漢字",
    "\x00",
    "=" * 10,
    "A" * 65536,
    token({"b": "x" * 100_000, "r": {}}),
]


@pytest.mark.parametrize("after", TAMPERED, ids=range(len(TAMPERED)))
def test_any_tampered_cursor_is_a_400_naming_after(after: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        Frontier.decode(after)
    assert raised.value.status_code == 400 and raised.value.param == "after"


@pytest.mark.parametrize("frontier", [Frontier(), Frontier(3, {4: 1, 7: 2}),
                                      Frontier(2**53, {2**53: 2**53})])
def test_what_encode_makes_decodes_back(frontier: Frontier) -> None:
    assert Frontier.decode(frontier.encode()) == frontier
    assert Frontier.decode(frontier.encode()).encode() == frontier.encode()
