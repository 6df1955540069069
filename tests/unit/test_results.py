from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from batchd.batches import results

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.text(min_size=1), st.dictionaries(st.text(), json_values, max_size=5))
def test_any_success_line_is_one_line_of_valid_json(custom_id: str, body: dict) -> None:  # type: ignore[type-arg]
    line = results.success_line(custom_id, body)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = json.loads(line)
    assert parsed["custom_id"] == custom_id and parsed["response"]["body"] == body
    assert parsed["error"] is None and parsed["id"].startswith("batch_req_")


@given(st.text(min_size=1), st.integers(400, 599), st.text(), st.one_of(st.none(), st.text()))
def test_any_error_line_is_one_line_of_valid_json(
    custom_id: str, status: int, message: str, param: str | None
) -> None:
    line = results.http_error_line(custom_id, status_code=status, message=message,
                                   error_type="invalid_request_error", code="x", param=param)
    assert line.count(b"\n") == 1
    error = json.loads(line)["response"]["body"]["error"]
    assert error == {"message": message, "type": "invalid_request_error", "param": param,
                     "code": "x"}
    stop = json.loads(results.stop_error_line(custom_id, code="batch_expired", message=message))
    assert stop["response"] is None and stop["error"]["code"] == "batch_expired"
