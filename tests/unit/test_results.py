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


def test_requests_sharing_a_prompt_prefix_are_grouped() -> None:
    from batchd.worker.prompt_order import prefix_key

    def req(cid: str, system: str, model: str = "m") -> tuple[str, dict]:  # type: ignore[type-arg]
        return cid, {"model": model, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": cid}]}

    mixed = [req("1", "A"), req("2", "B"), req("3", "A"), req("4", "B", "other"),
             req("5", "B"), req("6", "A")]
    order = [cid for cid, _ in sorted(mixed, key=prefix_key)]
    assert order == ["1", "3", "6", "2", "5", "4"]  # stable within each group


def test_responses_and_completions_lines_are_grouped_by_how_their_prompt_begins() -> None:
    from batchd.worker.prompt_order import prefix_key

    few_shot = "Q: 1+1? A: 2. " * 30
    lines = [("r1", {"model": "m", "instructions": "Be terse.", "input": "x"}),
             ("c1", {"model": "m", "prompt": few_shot + "Q: 2+2? A:"}),
             ("r2", {"model": "m", "input": [{"role": "user", "content": "alone"}]}),
             ("r3", {"model": "m", "instructions": "Be terse.", "input": "y"}),
             ("c2", {"model": "m", "prompt": few_shot + "Q: 3+3? A:"})]
    keys = {cid: prefix_key((cid, body)) for cid, body in lines}
    assert keys["r1"] == keys["r3"] == ("m", "Be terse.")
    assert keys["c1"] == keys["c2"] and keys["r2"] == ("m", "alone")
