"""The output cursor's second part (how much of a part a page that ended at its byte budget
read): it round-trips, and any tampering with it is a 400 naming `after`, as the first part."""

from __future__ import annotations

import base64

import orjson
import pytest

from batchd.batches.partial import Frontier
from batchd.errors import InvalidRequest


def inside(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def test_a_position_inside_parts_round_trips() -> None:
    frontier = Frontier(2, {3: 1}, {3: (5, 12_345), 7: (1, 9)})
    token = frontier.encode()
    assert "." in token and Frontier.decode(token) == frontier
    assert "." not in Frontier(2, {3: 1}).encode()


@pytest.mark.parametrize("within", [
    inside({}), inside([]), inside({"1": [1]}), inside({"1": [1, 2, 3]}), inside({"1": [-1, 2]}),
    inside({"1": [1.5, 2]}), inside({"1": [True, 2]}), inside({"x": [1, 2]}),
    inside({"1": [2**63, 0]}), inside({"01": [1, 2]}), "!!", "", "a.b",
])
def test_a_tampered_position_is_a_400_naming_after(within: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        Frontier.decode(Frontier(0, {}).encode() + "." + within)
    assert raised.value.param == "after"
