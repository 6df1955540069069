from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd.batches.validation import UTF8_BOM, InputValidator, ValidationOutcome

ENDPOINT = "/v1/chat/completions"


def request(custom_id: str, model: str = "m1", **body: object) -> bytes:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                        "body": payload}) + "\n").encode()


def validate(lines: list[bytes], *, max_requests: int = 100, chunk_lines: int = 2,
             max_listed_errors: int = 10) -> ValidationOutcome:
    validator = InputValidator(endpoint=ENDPOINT,
                               served_model=lambda m: m if m in {"m1", "m2"} else None,
                               max_requests=max_requests, chunk_lines=chunk_lines,
                               max_listed_errors=max_listed_errors)
    for line in lines:
        validator.feed(line)
    return validator.finish()


def test_good_file_is_planned_in_chunks_of_whole_lines() -> None:
    lines = [request(f"r{i}") for i in range(5)]
    outcome = validate(lines)
    assert outcome.ok and outcome.total == 5 and outcome.model == "m1"
    assert [(p.line_start, p.n_lines) for p in outcome.plans] == [(1, 2), (3, 2), (5, 1)]
    data = b"".join(lines)
    # The byte ranges tile the file exactly, so a worker can read its chunk alone.
    assert outcome.plans[0].byte_start == 0 and outcome.plans[-1].byte_end == len(data)
    plans = outcome.plans
    assert all(a.byte_end == b.byte_start for a, b in itertools.pairwise(plans))


def test_mixed_models_are_allowed_and_leave_batch_model_unset() -> None:
    outcome = validate([request("a", "m1"), request("b", "m2")])
    assert outcome.ok and outcome.model is None


def test_blank_lines_are_skipped_but_counted_for_line_numbers() -> None:
    outcome = validate([request("a"), b"\n", b"{not json}\n"])
    assert outcome.total == 2
    assert [(e.code, e.line) for e in outcome.errors] == [("invalid_json_line", 3)]


@pytest.mark.parametrize(
    ("line", "code", "param"),
    [
        (b"{oops\n", "invalid_json_line", None),
        (b"[1, 2]\n", "invalid_json_line", None),
        (json.dumps({"method": "POST", "url": ENDPOINT, "body": {}}).encode(),
         "missing_required_parameter", "custom_id"),
        (json.dumps({"custom_id": "x", "url": ENDPOINT, "body": {}}).encode(),
         "missing_required_parameter", "method"),
        (json.dumps({"custom_id": "x", "method": "POST", "body": {}}).encode(),
         "missing_required_parameter", "url"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": ENDPOINT}).encode(),
         "missing_required_parameter", "body"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/embeddings",
                     "body": {"model": "m1", "messages": []}}).encode(), "invalid_url", "url"),
        (request("x", "nope"), "model_not_found", "body.model"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": ENDPOINT,
                     "body": {"messages": []}}).encode(), "invalid_request", "body.model"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": ENDPOINT,
                     "body": {"model": "m1"}}).encode(), "invalid_request", "body.messages"),
        (request("x", stream=True), "streaming_unsupported", "body.stream"),
        (json.dumps({"custom_id": "x", "method": "GET", "url": ENDPOINT,
                     "body": {"model": "m1", "messages": []}}).encode(), "invalid_value",
         "method"),
        (json.dumps({"custom_id": 7, "method": "POST", "url": ENDPOINT,
                     "body": {"model": "m1", "messages": []}}).encode(), "invalid_type",
         "custom_id"),
    ],
)
def test_each_bad_line_is_reported_with_code_param_and_line(
    line: bytes, code: str, param: str | None
) -> None:
    outcome = validate([request("first"), line])
    assert not outcome.ok
    [error] = outcome.errors
    assert (error.code, error.param, error.line) == (code, param, 2)
    assert error.message


def test_duplicate_custom_id() -> None:
    outcome = validate([request("a"), request("b"), request("a")])
    [error] = outcome.errors
    assert (error.code, error.param, error.line) == ("duplicate_custom_id", "custom_id", 3)


def test_every_bad_line_is_listed_up_to_the_cap_then_counted() -> None:
    outcome = validate([b"bad\n"] * 15, max_listed_errors=10)
    assert [e.line for e in outcome.errors[:10]] == list(range(1, 11))
    assert outcome.errors[-1].code == "too_many_errors"
    assert "5 more" in outcome.errors[-1].message


def test_empty_file() -> None:
    outcome = validate([b"\n", b"  \n"])
    assert [e.code for e in outcome.errors] == ["empty_file"]


def test_too_many_requests() -> None:
    outcome = validate([request(f"r{i}") for i in range(4)], max_requests=3)
    assert outcome.errors[0].code == "too_many_tasks"
    assert "3" in outcome.errors[0].message


@given(st.lists(st.binary(max_size=200), max_size=30))
def test_any_bytes_give_a_clean_outcome(chunks: list[bytes]) -> None:
    lines = [c.replace(b"\n", b"") + b"\n" for c in chunks]
    outcome = validate(lines)
    # Every line is accounted for: a request (a blank line is none) or an error naming it.
    requests = [n for n, line in enumerate(lines, 1)
                if (line.removeprefix(UTF8_BOM) if n == 1 else line).strip()]
    assert outcome.total == len(requests)
    named = [e.line for e in outcome.errors if e.line is not None]
    assert named == sorted(set(named)) and set(named) <= set(requests)
    # An empty file is refused too, with a reason.
    assert outcome.ok == (bool(requests) and not named)
    if outcome.ok:
        assert sum(p.n_lines for p in outcome.plans) == outcome.total
