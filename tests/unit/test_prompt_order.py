"""The order a chunk's requests run in: alike prompts together, for the prefix cache."""

from __future__ import annotations

from batchd.serving.chat import CHAT
from batchd.serving.completions import COMPLETIONS
from batchd.serving.responses import RESPONSES
from batchd.worker.prompt_order import prefix_key


def test_requests_sharing_a_prompt_prefix_are_grouped() -> None:
    def req(cid: str, system: str, model: str = "m") -> tuple[str, dict]:  # type: ignore[type-arg]
        return cid, {"model": model, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": cid}]}

    mixed = [req("1", "A"), req("2", "B"), req("3", "A"), req("4", "B", "other"),
             req("5", "B"), req("6", "A")]
    order = [cid for cid, _ in sorted(mixed, key=prefix_key(CHAT))]
    assert order == ["1", "3", "6", "2", "5", "4"]  # stable within each group


def test_responses_and_completions_lines_are_grouped_by_how_their_prompt_begins() -> None:
    few_shot = "Q: 1+1? A: 2. " * 30
    lines = [("r1", {"model": "m", "instructions": "Be terse.", "input": "x"}),
             ("c1", {"model": "m", "prompt": few_shot + "Q: 2+2? A:"}),
             ("r2", {"model": "m", "input": [{"role": "user", "content": "alone"}]}),
             ("r3", {"model": "m", "instructions": "Be terse.", "input": "y"}),
             ("c2", {"model": "m", "prompt": few_shot + "Q: 3+3? A:"})]
    keys = {cid: prefix_key(RESPONSES if cid[0] == "r" else COMPLETIONS)((cid, body))
            for cid, body in lines}
    assert keys["r1"] == keys["r3"] == ("m", "Be terse.")
    assert keys["c1"] == keys["c2"] and keys["r2"] == ("m", "alone")
