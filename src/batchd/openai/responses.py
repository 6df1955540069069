"""The OpenAI Responses wire format (`/v1/responses`, text only): the request, its translation
into a chat request for the engines, the response object and its streamed events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from batchd import ids
from batchd.errors import BatchdError, InvalidRequest, invalid_request_of
from batchd.openai.base import NOT_SET, OpenAIBaseModel, StrictFloat, refuse_unsupported
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.metadata import check_metadata

ROLES = ("user", "assistant", "system", "developer")
# The content part types a text message may hold, by the role that sends them.
TEXT_PARTS = {"input_text", "output_text", "text"}
MIN_OUTPUT_TOKENS = 16  # OpenAI refuses a smaller max_output_tokens
# Values of otherwise refused parameters that ask for nothing batchd does not do.
ACCEPTED: dict[str, tuple[object, ...]] = {
    "tool_choice": (None, "none", "auto"), "background": (None, False),
    "top_logprobs": (None, 0), "store": (None, False), "truncation": (None, "disabled"),
    "service_tier": (None, "auto", "default")}


class ResponsesRequest(OpenAIBaseModel):
    model: StrictStr
    input: StrictStr | list[Any]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=MIN_OUTPUT_TOKENS)
    temperature: StrictFloat | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | None = Field(default=None, gt=0, le=1)
    stream: StrictBool | None = False
    metadata: dict[str, Any] | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    # What batchd does not do: refused by name (a 400 naming the parameter), never ignored.
    tools: Any = None
    tool_choice: Any = None
    previous_response_id: Any = None
    background: Any = None
    conversation: Any = None
    prompt: Any = None
    reasoning: Any = None
    include: Any = None
    top_logprobs: Any = None
    max_tool_calls: Any = None
    stream_options: Any = None
    store: Any = None  # batchd keeps no responses to retrieve later
    truncation: Any = None  # an input too long for the model is a 400, never cut
    service_tier: Any = None
    context_management: Any = None
    moderation: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None
    background_options: Any = None

    @field_validator("tools", "previous_response_id", "conversation", "prompt", "reasoning",
                     "include", "max_tool_calls", "stream_options", "tool_choice",
                     "background", "top_logprobs", "store", "truncation", "service_tier",
                     "context_management", "moderation", "prompt_cache_retention",
                     "prompt_cache_options", "background_options")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        return refuse_unsupported(value, ACCEPTED.get(info.field_name or "", NOT_SET))

    def messages(self) -> list[dict[str, Any]]:
        """`instructions` and `input` as chat messages; anything but text is refused, naming
        where it is."""
        out: list[dict[str, Any]] = []
        if self.instructions:
            # "system", not "developer": every chat template knows it.
            out.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            if not self.input and not out:
                raise InvalidRequest("Invalid 'input': it must not be empty.",
                                     code="invalid_value", param="input")
            out.append({"role": "user", "content": self.input})
            return out
        if not self.input:
            raise InvalidRequest("Invalid 'input': it must not be an empty list.",
                                 code="invalid_value", param="input")
        for i, item in enumerate(self.input):
            out.append(_message(item, f"input[{i}]"))
        return out

    def check(self) -> None:
        """Refuse, by name, what is valid JSON but not something batchd can honour."""
        text = dict(self.text or {})
        self.response_format()
        text.pop("format", None)
        if text.pop("verbosity", None) not in (None, "medium"):
            raise InvalidRequest("Unsupported parameter: 'text.verbosity' is not supported by "
                                 "batchd yet.", code="unsupported_parameter",
                                 param="text.verbosity")
        for key in text:
            raise InvalidRequest(f"Unsupported parameter: 'text.{key}' is not supported by "
                                 "batchd yet.", code="unsupported_parameter",
                                 param=f"text.{key}")
        if self.metadata is not None:
            check_metadata(self.metadata)

    def response_format(self) -> dict[str, Any] | None:
        """`text.format` as chat's `response_format` (None: plain text). The Responses API
        writes a schema's fields flat (`{"type": "json_schema", "name", "schema", "strict"}`)
        where chat nests them under `json_schema`."""
        fmt = (self.text or {}).get("format")
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("Invalid value for 'text.format.type': expected 'text', "
                                 "'json_object' or 'json_schema'.", code="invalid_value",
                                 param="text.format.type")
        if kind != "json_schema":
            return {"type": kind}
        for key in ("name", "schema"):
            if key not in fmt:
                raise InvalidRequest(f"Missing required parameter: 'text.format.{key}'.",
                                     code="missing_required_parameter",
                                     param=f"text.format.{key}")
        spec = {key: value for key, value in fmt.items() if key != "type"}
        return {"type": "json_schema", "json_schema": spec}

    def chat(self) -> ChatCompletionRequest:
        """The chat request the engine runs for it (what the chat request refuses is named
        as this request names it)."""
        self.check()
        with in_responses_terms():
            chat = ChatCompletionRequest.model_validate({
                "model": self.model, "messages": self.messages(),
                "max_completion_tokens": self.max_output_tokens,
                "temperature": self.temperature, "top_p": self.top_p,
                "response_format": self.response_format(),
            })
            chat.check()
        return chat


def _message(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an input message object.",
                             code="invalid_type", param=where)
    kind = item.get("type", "message")
    if kind != "message":
        raise InvalidRequest(f"Invalid '{where}.type': input items of type {kind!r} are not "
                             "supported by batchd (only text messages are).",
                             code="unsupported_parameter", param=f"{where}.type")
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"Invalid value: {role!r}. Supported values are: "
                             f"{', '.join(repr(r) for r in ROLES)}.",
                             code="invalid_value", param=f"{where}.role")
    role = "system" if role == "developer" else role  # as chat templates know it
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid '{where}.content': expected a string or a list of "
                             "content parts.", code="invalid_type", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type not in TEXT_PARTS:
            raise InvalidRequest(f"Invalid '{at}.type': content of type {part_type!r} is not "
                                 "supported by batchd (only text is).",
                                 code="unsupported_parameter", param=f"{at}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"Invalid '{at}.text': expected a string.",
                                 code="invalid_type", param=f"{at}.text")
        texts.append(text)
    return {"role": role, "content": "".join(texts)}


# The chat parameters a Responses request becomes, by the names its caller used.
RESPONSES_NAMES = {"max_completion_tokens": "max_output_tokens", "max_tokens":
                   "max_output_tokens", "messages": "input"}


@contextlib.contextmanager
def in_responses_terms() -> Iterator[None]:
    """An engine's refusal of the chat request a Responses request became, naming the
    parameter the caller sent (`max_output_tokens`, not `max_completion_tokens`)."""
    try:
        yield
    except InvalidRequest as exc:
        renamed = _responses_name(exc.param)
        if renamed != exc.param and exc.param is not None:
            exc.message = exc.message.replace(exc.param, renamed or "")
            exc.param = renamed
        raise
    except ValidationError as exc:  # the format given was not a valid one
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        if loc[:2] == ("response_format", "json_schema"):
            loc = ("text", "format", *loc[2:])
        elif loc[:1] == ("response_format",):
            loc = ("text", "format", *loc[1:])
        raise invalid_request_of(first, loc) from exc


def _responses_name(param: str | None) -> str | None:
    if param is None:
        return None
    if param in RESPONSES_NAMES:
        return RESPONSES_NAMES[param]
    for chat_name, name in (("response_format.json_schema", "text.format"),
                            ("response_format", "text.format")):
        if param.startswith(chat_name):
            return name + param[len(chat_name):]
    return param


def error_object(exc: BaseException) -> dict[str, Any]:
    """A failed response's `error`: its code is one of the few OpenAI defines."""
    if isinstance(exc, InvalidRequest):
        return {"code": "invalid_prompt", "message": exc.message}
    if isinstance(exc, BatchdError):
        return {"code": "server_error", "message": exc.message}
    return {"code": "server_error",
            "message": "The server had an error while processing your request."}


def usage_object(input_tokens: int, output_tokens: int, cached: int = 0,
                 reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def output_message(*, item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_text(text)] if status != "in_progress" else []}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(
    request: ResponsesRequest, *, response_id: str, created: int, status: str,
    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
    completed_at: int | None = None, error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `response` object. `status` is in_progress, completed, incomplete (the output hit
    max_output_tokens) or failed."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": completed_at,
        "background": False,
        "error": error,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                               else None),
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "model": request.model,
        "output": output,
        "parallel_tool_calls": (True if request.parallel_tool_calls is None
                                else request.parallel_tool_calls),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,  # batchd keeps no responses to retrieve later
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "text": {"format": (request.text or {}).get("format") or {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def finished_status(finish_reason: str) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def new_ids() -> tuple[str, str]:
    """(response id, output message id)."""
    return ids.response_id(), ids.output_message_id()
