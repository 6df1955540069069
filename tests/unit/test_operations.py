"""What a request may cost, for enqueued-token quotas, whatever its body holds."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.serving.chat import CHAT
from batchd.serving.completions import COMPLETIONS
from batchd.serving.embeddings import EMBEDDINGS
from batchd.serving.operation import Operation
from batchd.serving.responses import RESPONSES


def test_estimates_count_prompt_and_the_output_the_request_may_make() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}],
            "max_tokens": 50, "n": 2}
    assert CHAT.estimate(chat) == 4 + 101 + 2 * 50
    assert COMPLETIONS.estimate({"model": "m", "prompt": ["a" * 40, "b" * 40], "n": 3}) == \
        11 + 11 + 2 * 3 * 16  # OpenAI's default of 16 tokens each
    assert COMPLETIONS.estimate({"model": "m", "prompt": [1, 2, 3], "max_tokens": 5}) == 3 + 5
    assert RESPONSES.estimate({"model": "m", "input": "x" * 40, "max_output_tokens": 20}) == 11 + 20
    assert EMBEDDINGS.estimate({"model": "m", "input": [[1, 2], [3]]}) == 3


def test_a_maximum_that_will_not_be_read_as_sent_costs_no_output() -> None:
    assert CHAT.estimate({"model": "m", "messages": [], "max_tokens": "9999999"}) == 0
    for odd in ("20", 20.0, True, 0, None):
        assert CHAT.estimate({"model": "m", "messages": [], "n": odd, "max_tokens": 9}) == 0
        assert CHAT.estimate({"model": "m", "messages": [], "max_completion_tokens": odd}) \
            == (1024 if odd is None else 0)
    assert CHAT.estimate({"model": "m", "messages": [], "n": 17}) == 0  # over OpenAI's 16
    assert RESPONSES.estimate({"model": "m", "input": "", "max_output_tokens": 15}) == 1


@pytest.mark.parametrize(("operation", "body"), [
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x" * 41}, {"role": "user"},
                                       {"role": "user", "content": [{"type": "text",
                                                                     "text": "y" * 9}]}]}),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3,
            "max_completion_tokens": 7, "max_tokens": 100}),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    (RESPONSES, {"model": "m", "input": "x" * 40, "instructions": "be brief"}),
    (RESPONSES, {"model": "m", "input": [{"role": "user", "content": "hi"}],
                 "max_output_tokens": 16}),
    (EMBEDDINGS, {"model": "m", "input": ["a" * 30, "b"]}),
])
def test_plain_bodies_are_costed_without_validating_them_as_validated(
        operation: Operation, body: dict[str, Any]) -> None:
    # The quick reading (what a batch's validation counts) against the validated request's.
    assert operation.quick_cost(body) is not None
    assert operation.estimate(body) == operation.cost(body, operation.parse(body))


def test_any_nesting_depth_is_estimated_without_recursion() -> None:
    deep: object = "x" * 40
    for _ in range(5000):
        deep = [deep]
    assert EMBEDDINGS.estimate({"model": "m", "input": deep}) == 11
    assert RESPONSES.estimate({"model": "m", "input": deep}) == 11 + 1024  # no maximum set
