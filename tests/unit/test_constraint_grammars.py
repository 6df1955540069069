"""The grammars of engines/constraints.py against the default model's real vocabulary (loaded
alone, without weights): what each lets an answer be, token by token, as the engine's
matchers see it. The whole path, on the real model, is in e2e/test_structured_outputs_server.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from batchd.engines.base import EngineRequestError
from batchd.engines.constraints import Constraint, Grammars, calls_constraint, json_constraint
from batchd.engines.llamacpp_options import default_model_path

# Parameters as pydantic writes them for nested models: `$ref`s into the root's `$defs`.
NESTED = {"type": "object", "properties": {"home": {"$ref": "#/$defs/Address"}},
          "required": ["home"], "additionalProperties": False,
          "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"], "additionalProperties": False}}}
SENTIMENT = {"type": "object", "properties": {"label": {"enum": ["good", "bad"]}},
             "required": ["label"], "additionalProperties": False}
FUNCTIONS: list[tuple[str, dict[str, Any] | None]] = [("move", NESTED), ("stop", None)]


@pytest.fixture(scope="module")
def vocab_model() -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True,
                            verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def grammars(vocab_model: llama_cpp.Llama) -> Grammars:
    return Grammars(llama_cpp.llama_model_get_vocab(vocab_model.model))


def accepts(grammars: Grammars, constraint: Constraint, text: str) -> bool:
    """Whether `text` is a complete answer under `constraint`."""
    matcher = grammars.matcher(constraint)
    tokens = grammars.tokenizer().tokenize_str(text)
    return bool(matcher.consume_tokens(tokens)) and bool(matcher.is_accepting())


CALL = '{"name":"move","arguments":{"home":{"city":"Oslo"}}}'


def test_calls_follow_each_functions_parameters_with_their_definitions(
        grammars: Grammars) -> None:
    required = calls_constraint(FUNCTIONS, several=True, or_text=False)
    assert accepts(grammars, required, CALL)
    assert accepts(grammars, required, CALL + '\n{"name":"stop","arguments":{}}')
    assert not accepts(grammars, required, '{"name":"move","arguments":{"home":{}}}')
    assert not accepts(grammars, required, '{"name":"fly","arguments":{}}')
    assert not accepts(grammars, required, "Sure, moving.")
    one = calls_constraint(FUNCTIONS, several=False, or_text=False)
    assert not accepts(grammars, one, CALL + "\n" + CALL)


def test_auto_takes_calls_or_text_after_a_little_whitespace_and_no_more(
        grammars: Grammars) -> None:
    auto = calls_constraint(FUNCTIONS, several=True, or_text=True)
    assert accepts(grammars, auto, "It is sunny.")
    assert accepts(grammars, auto, "\n\n" + CALL)  # a reasoning model's, after </think>
    # JSON that is not a call of these functions cannot pass as "text" either
    assert not accepts(grammars, auto, '\n\n{"name":"fly","arguments":{}}')
    assert not accepts(grammars, auto, "\n" * 12 + CALL)


def test_auto_with_a_response_format_answers_in_that_format_or_calls(
        grammars: Grammars) -> None:
    auto = calls_constraint(FUNCTIONS, several=True, or_text=True, answer=SENTIMENT)
    assert accepts(grammars, auto, '{"label":"good"}')
    assert accepts(grammars, auto, CALL)
    assert not accepts(grammars, auto, "It is good.")
    assert not accepts(grammars, auto, '{"label":"great"}')


def test_answers_are_compact_and_end_on_any_end_of_turn_token(
        grammars: Grammars, vocab_model: llama_cpp.Llama) -> None:
    schema = json_constraint(SENTIMENT, "response_format.json_schema.schema")
    assert accepts(grammars, schema, '{"label":"bad"}')
    assert not accepts(grammars, schema, '{ "label": "bad" }')
    ends = grammars._end_tokens()
    (im_end,) = vocab_model.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert im_end in ends and vocab_model.token_eos() in ends


@pytest.mark.parametrize(("make", "param"), [
    (lambda: json_constraint({**SENTIMENT, "x-guidance": {"lenient": True}}, "rf"),
     "rf.x-guidance"),
    (lambda: calls_constraint([("f", {"type": "object", "x-guidance": {}})], several=False,
                              or_text=False), "tools[0].function.parameters.x-guidance"),
])
def test_a_schema_may_not_set_grammar_options(make: Any, param: str) -> None:
    with pytest.raises(EngineRequestError) as refused:
        make()
    assert refused.value.param == param


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_it(grammars: Grammars) -> None:
    for schema in ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nowhere"}}},
                   {"type": "string", "format": "no-such-format"}):
        with pytest.raises(EngineRequestError) as refused:
            grammars.matcher(json_constraint(schema, "response_format.json_schema.schema"))
        assert refused.value.param == "response_format.json_schema.schema"
