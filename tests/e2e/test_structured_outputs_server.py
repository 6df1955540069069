"""Answers programs can use, on the real server and the real SmolLM2 model (llama.cpp) with the
official openai SDK: structured outputs (the SDK's parse helpers, a batch of mixed schemas),
tool calls, and what is refused by name (images, schemas that cannot be enforced)."""

from __future__ import annotations

import enum
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.types import Batch
from pydantic import BaseModel, Field

from tests.support.server import Server

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def client(real_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=real_server.base_url, api_key=real_server.api_key) as client:
        yield client


def run_batch(client: OpenAI, lines: list[dict[str, Any]], *, timeout: float) -> Batch:
    """Uploads `lines` as a batch input file, runs it and returns the batch once it ended."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    batch_file = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=batch_file.id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + timeout
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    return batch


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Address(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int
    favourite: Colour
    hobbies: list[str] = Field(max_length=3)
    home: Address
    nickname: str | None = Field(max_length=16)


def test_the_sdk_parse_helpers_get_their_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, temperature=0, max_tokens=300, response_format=Person,
        messages=[{"role": "user", "content": "Invent a person."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)

    response = client.responses.parse(model=MODEL, temperature=0, max_output_tokens=300,
                                      input="Invent a person.", text_format=Person)
    assert isinstance(response.output_parsed, Person)
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
     "required": ["label"], "additionalProperties": False},
    {"type": "object", "properties": {"score": {"type": "integer"},
                                      "ok": {"type": "boolean"}},
     "required": ["score", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 3,
                                               "items": {"type": "string", "maxLength": 12}}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                      "where": {"type": "object", "properties": {
                                          "lat": {"type": "number"}, "lon": {"type": "number"}},
                                          "required": ["lat", "lon"],
                                          "additionalProperties": False}},
     "required": ["city", "where"], "additionalProperties": False},
]


def test_a_batch_of_mixed_schemas_validates_at_temperature_one(client: OpenAI) -> None:
    """Every line carries its own schema (or none); every answer that ends `stop` parses
    and validates against its own, with the unconstrained lines in the same decode steps."""
    lines = []
    for i in range(12):
        body: dict[str, Any] = {
            "model": MODEL, "temperature": 1.0, "max_tokens": 120,
            "messages": [{"role": "user", "content": f"Review number {i}: a nice day."}]}
        if i % 6 != 5:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": f"s{i % 4}", "schema": SCHEMAS[i % 4], "strict": True}}
        lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": body})
    batch = run_batch(client, lines, timeout=240)
    assert batch.status == "completed" and batch.output_file_id, batch
    results = [json.loads(line) for line in
               client.files.content(batch.output_file_id).text.splitlines()]
    assert len(results) == 12
    stopped = 0
    for result in results:
        i = int(result["custom_id"][1:])
        choice = result["response"]["body"]["choices"][0]
        if i % 6 == 5 or choice["finish_reason"] != "stop":
            continue
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[i % 4])
        stopped += 1
    assert stopped >= 5  # most answers finish well inside the limit


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                             "maxLength": 24}},
                   "required": ["city"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"],
        "additionalProperties": False}}}


def test_tool_choice_required_and_named_come_back_as_tool_calls(client: OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    required = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, ADD], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60)
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id.startswith("call_") and call.function.name in ("get_weather", "add")
    json.loads(call.function.arguments)

    named = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, ADD], temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = named.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI ends a call of the named function
    (call,) = choice.message.tool_calls  # type: ignore[misc]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    # The conversation goes on with the call and its result: a plain answer comes back.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C."}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                            tool_choice="none", temperature=0, max_tokens=20)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls

    with client.chat.completions.stream(
            model=MODEL, messages=messages[:1], tools=[WEATHER], temperature=0,
            max_tokens=60, tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert streamed and streamed[0].function.name == "get_weather"
    json.loads(streamed[0].function.arguments)


class Move(BaseModel):
    """Move to an address."""

    to: Address
    urgent: bool


def test_sdk_pydantic_tools_and_auto_with_a_response_format(client: OpenAI) -> None:
    # The SDK writes a nested model's parameters with `$ref`s into `$defs`.
    tool = openai.pydantic_function_tool(Move)
    assert "$defs" in tool["function"]["parameters"]
    messages: list[Any] = [{"role": "user", "content": "Move me to Oslo, Norway, quickly."}]
    try:
        done = client.chat.completions.parse(model=MODEL, messages=messages, tools=[tool],
                                             tool_choice="required", temperature=1.0,
                                             parallel_tool_calls=False, max_tokens=160, seed=3)
    except openai.LengthFinishReasonError as cut:
        # A small model may still be writing a string at max_tokens (the sampled answer
        # depends on what the prompt cache held): the SDK refuses to parse a `length` answer.
        assert cut.completion.choices[0].finish_reason == "length"
    else:
        (call,) = done.choices[0].message.tool_calls or []
        assert isinstance(call.function.parsed_arguments, Move)
    # `auto` with a response format: a call, or an answer in that format, never free text.
    labels = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": {
        "type": "object", "properties": {"label": {"enum": ["spam", "ham"]}},
        "required": ["label"], "additionalProperties": False}}}
    for seed in range(3):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Label: 'win a prize now'"}],
            tools=[WEATHER], response_format=labels,  # type: ignore[arg-type]
            temperature=1.0, max_tokens=60, seed=seed).choices[0]
        if answer.finish_reason == "stop":
            assert json.loads(answer.message.content or "")["label"] in ("spam", "ham")
        elif answer.finish_reason == "tool_calls":
            assert answer.message.tool_calls and answer.message.content is None


def refusal(client: OpenAI, **params: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=4, **params)
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    return body


def test_what_cannot_be_honoured_is_refused_by_name(client: OpenAI) -> None:
    image = refusal(client, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert image["param"] == "messages[0].content[1]"

    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    strict = refusal(client, messages=[{"role": "user", "content": "x"}],
                     response_format={"type": "json_schema", "json_schema": {
                         "name": "s", "schema": loose, "strict": True}})
    assert strict["param"] == "response_format.json_schema.schema"
    assert "additionalProperties" in strict["message"]

    nested = {"type": "object", "additionalProperties": False, "required": ["p"],
              "properties": {"p": {"type": "object", "properties": {"q": {"type": "string"}},
                                   "additionalProperties": False}}}
    missing = refusal(client, messages=[{"role": "user", "content": "x"}],
                      response_format={"type": "json_schema", "json_schema": {
                          "name": "s", "schema": nested, "strict": True}})
    assert missing["param"] == "response_format.json_schema.schema.properties.p"

    unknown = {"type": "object", "properties": {"d": {"type": "string", "format": "weird"}}}
    unenforceable = refusal(client, messages=[{"role": "user", "content": "x"}],
                            response_format={"type": "json_schema", "json_schema": {
                                "name": "s", "schema": unknown}})
    assert unenforceable["param"] == "response_format.json_schema.schema"
    assert "weird" in unenforceable["message"]

    no_json_word = refusal(client, messages=[{"role": "user", "content": "x"}],
                           response_format={"type": "json_object"})
    assert no_json_word["param"] == "messages"

    unknown_tool = refusal(client, messages=[{"role": "user", "content": "x"}],
                           tools=[WEATHER], tool_choice={"type": "function",
                                                         "function": {"name": "nope"}})
    assert unknown_tool["param"] == "tool_choice.function.name"


def test_refusals_in_a_batch_are_line_errors_and_the_rest_runs(client: OpenAI) -> None:
    picture = [{"type": "text", "text": "See"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": picture}]},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "schema": {
                "type": "object", "properties": {"d": {"type": "string", "format": "weird"}}}}}},
        {"messages": [{"role": "user", "content": "Say hi."}]},
    ]
    batch = run_batch(client, [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "max_tokens": 4, **body}} for i, body in enumerate(bodies)],
        timeout=120)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    assert batch.error_file_id
    errors = {json.loads(line)["custom_id"]: json.loads(line)["response"]["body"]["error"]
              for line in client.files.content(batch.error_file_id).text.splitlines()}
    assert errors["r0"]["param"] == "messages[0].content[1]"
    assert errors["r1"]["param"] == "response_format.json_schema.schema"
