"""How the llama.cpp engine reads a chat request and writes its answer.

Messages go to the model's chat template as it expects them: text only (an image, audio or
file part is refused by name: this engine has no vision or audio model, and a dropped part
would be answered as if it had never been sent). Tools go to the template when it renders
tools (`tools` appears in it); otherwise they are described in a system message, and earlier
calls and their results are written as text (the documented fallback).

A tool call is generated under a grammar: the arguments object for a named function; for
`required`, one JSON object per call, `{"name": …, "arguments": {…}}`, each checked against
its function's parameters; for `auto`, either that or a plain answer that does not start with
`{`. So every call that finishes parses, names a real function and fits its schema.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from batchd.engines.base import EngineRequestError
from batchd.engines.constraints import Constraint, calls_constraint, json_constraint
from batchd.openai.chat import ChatCompletionRequest, ChatMessage

# Content parts the template can take (as text); any other kind is refused by name.
TEXT_PARTS = frozenset({"text", "refusal"})

FALLBACK_TOOLS_PROMPT = (
    "You can call these functions:\n{functions}\n\nTo call a function, answer with only a "
    'JSON object: {{"name": <function name>, "arguments": <arguments object>}}, one per line '
    "for several calls.")


@dataclass(frozen=True)
class ChatPlan:
    """What to render and how to read the answer."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None  # for a template that renders them
    constraint: Constraint | None  # what the answer (after any thinking) must follow
    tool_mode: str  # "none", "auto", "required" or "function"
    function: str | None = None  # the named function (tool_mode "function")
    names: frozenset[str] = frozenset()  # the functions it may call


def plan(request: ChatCompletionRequest, *, template_tools: bool) -> ChatPlan:
    mode, function = request.tool_mode()
    tools = [tool.function for tool in request.tools or []]
    use_tools = mode != "none"
    messages = [_message(m, i, native=template_tools) for i, m in enumerate(request.messages)]
    if use_tools and not template_tools:
        listing = "\n".join(json.dumps({"name": f.name, "description": f.description or "",
                                        "parameters": f.parameters or {"type": "object"}})
                            for f in tools)
        messages = _with_system(messages, FALLBACK_TOOLS_PROMPT.format(functions=listing))
    constraint: Constraint | None = None
    if mode == "function":
        chosen = next(f for f in tools if f.name == function)
        constraint = json_constraint(chosen.parameters, f"tools[{_index(request, chosen.name)}]"
                                                        ".function.parameters")
    elif mode in ("required", "auto"):
        # With `auto`, the answer that is not a call follows the response format, if any.
        answer = _answer_schema(request) if mode == "auto" else None
        constraint = calls_constraint([(f.name, f.parameters) for f in tools],
                                      several=request.parallel_tool_calls is not False,
                                      or_text=mode == "auto", answer=answer)
    elif _answer_schema(request) is not None:
        spec = request.json_schema
        constraint = json_constraint(spec.schema_ if spec else None,
                                     "response_format.json_schema.schema" if spec
                                     else "response_format")
    native_tools = ([{"type": "function", "function": f.model_dump(exclude_none=True)}
                     for f in tools] if use_tools and template_tools else None)
    return ChatPlan(messages=messages, tools=native_tools, constraint=constraint,
                    tool_mode=mode, function=function,
                    names=frozenset(f.name for f in tools))


def _answer_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema a JSON answer follows (any object for `json_object`); None: plain text."""
    if request.response_format is None or request.response_format.type == "text":
        return None
    spec = request.json_schema
    return (spec.schema_ if spec else None) or {"type": "object"}


def _index(request: ChatCompletionRequest, name: str) -> int:
    return next(i for i, tool in enumerate(request.tools or []) if tool.function.name == name)


def _message(message: ChatMessage, i: int, *, native: bool) -> dict[str, Any]:
    text = _text(message.content, i)
    if message.role == "assistant" and message.tool_calls:
        if native:
            return {"role": "assistant", "content": text,
                    "tool_calls": [{"id": call.id, "type": "function",
                                    "function": {"name": call.function.name,
                                                 "arguments": _arguments(call.function.arguments)}}
                                   for call in message.tool_calls]}
        calls = "\n".join(json.dumps({"name": call.function.name,
                                      "arguments": _arguments(call.function.arguments)})
                          for call in message.tool_calls)
        return {"role": "assistant", "content": f"{text}\n{calls}" if text else calls}
    if message.role in ("tool", "function"):
        if native:
            return {"role": "tool", "content": text, "tool_call_id": message.tool_call_id,
                    "name": message.name}
        about = message.tool_call_id or message.name or "a function"
        return {"role": "user", "content": f"Result of {about}:\n{text}"}
    return {"role": message.role, "content": text}


def _text(content: str | list[dict[str, Any]] | None, i: int) -> str:
    if not isinstance(content, list):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind not in TEXT_PARTS:
            raise EngineRequestError(
                f"Invalid content type. {kind} is only supported by certain models; this "
                "model reads text only.", code="invalid_value",
                param=f"messages[{i}].content[{j}]")
        texts.append(str(part.get("text", part.get("refusal", ""))))
    return "".join(texts)


def _arguments(arguments: str) -> Any:
    """Arguments as templates expect them (an object), or the text if it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def tool_calls_of(text: str, plan: ChatPlan) -> list[dict[str, Any]] | None:
    """The calls in a finished tool answer (None: a plain answer, a JSON answer that is not
    calls, or one cut short). Only calls of the request's functions with an arguments
    object count, whatever wrote them."""
    text = text.strip()
    if plan.tool_mode == "function":
        calls: list[Any] = [{"name": plan.function, "arguments": _loads(text)}]
    elif plan.tool_mode in ("required", "auto") and text.startswith("{"):
        # Lines at "\n" only: JSON strings may hold U+2028 and the like unescaped.
        calls = [_loads(line) for line in text.split("\n") if line.strip()]
    else:
        return None
    if not calls or not all(_is_call(call, plan.names) for call in calls):
        return None
    return [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
             "function": {"name": call["name"],
                          "arguments": json.dumps(call["arguments"], ensure_ascii=False,
                                                  separators=(",", ":"))}}
            for call in calls]


def _is_call(call: Any, names: frozenset[str]) -> bool:
    return (isinstance(call, dict) and set(call) == {"name", "arguments"}
            and call["name"] in names and isinstance(call["arguments"], dict))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
