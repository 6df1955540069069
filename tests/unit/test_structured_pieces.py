"""The pure pieces behind structured outputs, tool calls and reasoning: OpenAI's strict-schema
rules, the thinking/answer split (whole and streamed), and reading tool calls back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd.engines import llamacpp_chat, reasoning
from batchd.engines.base import EngineRequestError
from batchd.errors import InvalidRequest
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.responses import ResponsesRequest
from batchd.openai.strict_schema import StrictSchemaError, check_strict

OBJ = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
       "additionalProperties": False}


@pytest.mark.parametrize(("schema", "where", "words"), [
    ({"type": "array"}, "s", "root schema must be an object"),
    ({"anyOf": [OBJ]}, "s", "root schema must be an object"),
    ({**OBJ, "additionalProperties": True}, "s", "additionalProperties"),
    ({**OBJ, "required": []}, "s", "Missing 'a'"),
    ({**OBJ, "properties": {"a": {"type": "object", "properties": {}}}}, "s.properties.a",
     "additionalProperties"),
    ({**OBJ, "properties": {"a": {"type": "array", "items": {"type": "object"}}}},
     "s.properties.a.items", "additionalProperties"),
    ({**OBJ, "$defs": {"D": {"type": "object", "properties": {"x": {}},
                             "additionalProperties": False}}}, "s.$defs.D", "Missing 'x'"),
    ({**OBJ, "properties": {"a": {"anyOf": [{"type": "string"}, {"properties": {"y": {}}}]}}},
     "s.properties.a.anyOf[1]", "additionalProperties"),
    # malformed keywords are the schema's mistake too, never a 500
    ({**OBJ, "properties": 5}, "s.properties", "must be an object"),
    ({**OBJ, "required": "a"}, "s.required", "array of strings"),
    ({**OBJ, "properties": {"a": {"anyOf": {"b": {}}}}}, "s.properties.a.anyOf",
     "must be an array"),
    ({**OBJ, "properties": {"a": {"type": "object", "properties": True,
                                  "additionalProperties": False}}},
     "s.properties.a.properties", "must be an object"),
])
def test_strict_rules_name_the_place_they_break(schema: dict[str, Any], where: str,
                                                 words: str) -> None:
    with pytest.raises(StrictSchemaError) as broken:
        check_strict(schema, "s")
    assert broken.value.where == where and words in str(broken.value)


def test_definitions_inside_definitions_cannot_nest_without_end() -> None:
    schema: dict[str, Any] = {**OBJ}
    inner = schema
    for _ in range(3000):
        inner["$defs"] = {"d": {**OBJ}}
        inner = inner["$defs"]["d"]
    with pytest.raises(StrictSchemaError, match="at most 10 levels"):
        check_strict(schema, "s")


def test_a_strict_schema_that_keeps_the_rules_passes() -> None:
    nested: dict[str, Any] = OBJ
    for _ in range(9):
        nested = {"type": "object", "properties": {"n": nested}, "required": ["n"],
                  "additionalProperties": False}
    check_strict(nested, "s")
    with pytest.raises(StrictSchemaError, match="at most 10 levels"):
        check_strict({"type": "object", "properties": {"n": {**nested, "properties": {
            "n": {"type": "object", "properties": {"n": nested}, "required": ["n"],
                  "additionalProperties": False}}}}, "required": ["n"],
                      "additionalProperties": False}, "s")


@pytest.mark.parametrize(("text", "opened", "expected"), [
    ("<think>hmm</think>\n\nYes.", False, ("hmm", "Yes.")),
    ("hmm</think>Yes.", True, ("hmm", "Yes.")),
    ("still thinking", True, ("still thinking", "")),
    ("<think>cut sho", False, ("cut sho", "")),
    ("plain answer", False, (None, "plain answer")),
    # an answer that did not begin thinking is all answer, `</think>` or not (as streamed)
    ("ab</think>x", False, (None, "ab</think>x")),
])
def test_thinking_and_answer_are_split_at_the_closing_tag(
        text: str, opened: bool, expected: tuple[str | None, str]) -> None:
    assert reasoning.split(text, opened=opened) == expected


@pytest.mark.parametrize(("prompt", "sent", "thinks"), [
    ("<|im_start|>assistant\n<think>\n", "<|im_start|>assistant\n<think>\n", True),
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n",
     "<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
    ("<|Assistant|>", "<|Assistant|><think>\n", True),
])
def test_a_reasoning_model_thinks_first_unless_its_template_turned_thinking_off(
        prompt: str, sent: str, thinks: bool) -> None:
    assert reasoning.thinking_prompt(prompt) == (sent, thinks)


@given(st.text(alphabet="<>/thinkab \n", max_size=40), st.booleans(),
       st.lists(st.integers(min_value=1, max_value=6), max_size=12))
def test_streamed_pieces_add_up_to_the_whole_split(text: str, opened: bool,
                                                   cuts: list[int]) -> None:
    splitter = reasoning.Splitter(opened=opened)
    thinking = answer = ""
    rest = text
    for n in cuts:
        piece, rest = rest[:n], rest[n:]
        t, a = splitter.feed(piece)
        thinking, answer = thinking + t, answer + a
    t, a = splitter.feed(rest, final=True)
    whole_thinking, whole_answer = reasoning.split(text, opened=opened)
    assert (thinking + t, answer + a) == (whole_thinking or "", whole_answer)


def request(**params: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **params})


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": OBJ}},
         {"type": "function", "function": {"name": "g"}}]


def test_tool_answers_are_read_back_as_openai_tool_calls() -> None:
    named = llamacpp_chat.plan(request(tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": "f"}}), template_tools=False)
    (call,) = llamacpp_chat.tool_calls_of('{"a":"x"}', named) or []
    assert call["function"] == {"name": "f", "arguments": '{"a":"x"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert llamacpp_chat.tool_calls_of('{"a":', named) is None  # cut short: no call

    required = llamacpp_chat.plan(request(tools=TOOLS, tool_choice="required"),
                                  template_tools=False)
    calls = llamacpp_chat.tool_calls_of(
        '{"name":"f","arguments":{"a":"1"}}\n{"name":"g","arguments":{}}', required) or []
    assert [c["function"]["name"] for c in calls] == ["f", "g"]
    auto = llamacpp_chat.plan(request(tools=TOOLS), template_tools=False)
    assert auto.tool_mode == "auto"
    assert llamacpp_chat.tool_calls_of("Just text.", auto) is None
    # only calls of the request's functions, with an arguments object, are calls
    for text in ('{"name":"h","arguments":{}}', '{"name":"f","parameters":{"a":"1"}}',
                 '{"name":"f","arguments":"a"}', '{"name":"f","arguments":{},"x":1}'):
        assert llamacpp_chat.tool_calls_of(text, required) is None, text
    # lines end at "\n" only: a JSON string may hold U+2028 unescaped
    (odd,) = llamacpp_chat.tool_calls_of(
        '\n\n{"name":"f","arguments":{"a":"x\u2028y"}}', required) or []
    assert json.loads(odd["function"]["arguments"]) == {"a": "x\u2028y"}
    assert "You can call these functions" in auto.messages[0]["content"]


def test_earlier_calls_and_results_are_written_for_the_template() -> None:
    chat = request(tools=TOOLS, tool_choice="none", messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"a":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}])
    native = llamacpp_chat.plan(chat, template_tools=True).messages
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"a": "x"}
    assert native[2] == {"role": "tool", "content": "done", "tool_call_id": "call_1",
                         "name": None}
    fallback = llamacpp_chat.plan(chat, template_tools=False).messages
    assert json.loads(fallback[1]["content"]) == {"name": "f", "arguments": {"a": "x"}}
    assert fallback[2]["role"] == "user" and "done" in fallback[2]["content"]


def test_a_non_text_part_is_refused_naming_it() -> None:
    chat = request(messages=[{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "input_audio", "input_audio": {}}]}])
    with pytest.raises(EngineRequestError) as refused:
        llamacpp_chat.plan(chat, template_tools=False)
    assert refused.value.param == "messages[0].content[1]"


@pytest.mark.parametrize(("params", "param"), [
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True,
                                                  "parameters": {"type": "object"}}}]},
     "tools[0].function.parameters"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
])
def test_tool_and_format_rules_are_400s_naming_the_parameter(params: dict[str, Any],
                                                              param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        request(**params).check()
    assert refused.value.param == param


def test_a_responses_text_format_becomes_the_chat_response_format() -> None:
    responses = ResponsesRequest.model_validate({
        "model": "m", "input": "hi", "text": {"format": {
            "type": "json_schema", "name": "s", "schema": OBJ, "strict": True}}})
    chat = responses.chat()
    assert chat.json_schema is not None and chat.json_schema.schema_ == OBJ
    assert chat.model_dump(exclude_unset=True, by_alias=True)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "s", "schema": OBJ, "strict": True}}
