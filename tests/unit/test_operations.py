"""What a request may cost, for enqueued-token quotas, whatever its body holds."""

from __future__ import annotations

from batchd.serving.chat import CHAT
from batchd.serving.completions import COMPLETIONS
from batchd.serving.embeddings import EMBEDDINGS
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


def test_a_body_that_will_not_run_costs_no_output() -> None:
    assert CHAT.estimate({"model": "m", "messages": [], "max_tokens": "9999999"}) == 0


def test_any_nesting_depth_is_estimated_without_recursion() -> None:
    deep: object = "x" * 40
    for _ in range(5000):
        deep = [deep]
    assert EMBEDDINGS.estimate({"model": "m", "input": deep}) == 11
    assert RESPONSES.estimate({"model": "m", "input": deep}) == 11 + 1024  # no maximum set
