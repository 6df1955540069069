"""The OpenAI chat-completions wire format: the request we accept and the objects we return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from batchd import ids
from batchd.errors import InvalidRequest
from batchd.openai.base import (
    SYSTEM_FINGERPRINT,
    GenerationParams,
    OpenAIBaseModel,
    StreamOptions,
    refuse_unsupported,
)
from batchd.openai.sampling import Sampling
from batchd.openai.strict_schema import StrictSchemaError, check_strict

# OpenAI's rule for function and schema names.
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(OpenAIBaseModel):
    name: StrictStr
    arguments: StrictStr  # a JSON text, as the model wrote it


class ToolCall(OpenAIBaseModel):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: StrictStr | None = None  # the call a `tool` message answers


class JsonSchemaFormat(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: StrictStr = Field(pattern=NAME_PATTERN)
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(OpenAIBaseModel):
    """`text` (the default), `json_object` (any JSON object) or `json_schema` (one schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(OpenAIBaseModel):
    name: StrictStr = Field(pattern=NAME_PATTERN)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None
    tools: list[Tool] | None = None
    # "none", "auto", "required" or {"type": "function", "function": {"name": ...}}: its
    # shape is checked by `tool_choice_of` (a union here would name its members in errors).
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    # Accepted by OpenAI but acted on by no batchd engine: refused by name (a 400 naming the
    # parameter), never silently ignored. `functions` and `function_call` are the deprecated
    # forms of `tools` and `tool_choice`; vLLM's `guided_*` fields are gone from vLLM itself,
    # which now ignores them without a word: an upstream server would too.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    web_search_options: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    guided_decoding_backend: Any = None
    guided_whitespace_pattern: Any = None

    @field_validator("functions", "function_call", "audio", "web_search_options",
                     "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                     "guided_decoding_backend", "guided_whitespace_pattern")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        return refuse_unsupported(value)

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self) -> Sampling:
        return self._sampling(
            max_tokens=self.output_limit,
            max_tokens_param=("max_completion_tokens" if self.max_completion_tokens
                              else "max_tokens"),
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else None)

    def check(self) -> None:
        """Refuse what the fields alone do not show (each a 400 naming its parameter):
        tool choices that name no tool, a strict schema that breaks OpenAI's rules."""
        fmt = self.response_format
        if (fmt is None and self.tools is None and self.tool_choice is None
                and self.parallel_tool_calls is None):
            return  # nothing here to check (most batch lines): each one passes here
        if fmt is not None and fmt.type == "json_schema":
            spec = fmt.json_schema
            if spec is None:
                raise InvalidRequest("Missing required parameter: "
                                     "'response_format.json_schema'.",
                                     code="missing_required_parameter",
                                     param="response_format.json_schema")
            if spec.strict:
                _check_strict(spec.schema_, "response_format.json_schema.schema",
                              f"response_format '{spec.name}'")
        if fmt is not None and fmt.type == "json_object" and not any(
                "json" in _text_of(m.content).lower() for m in self.messages):
            raise InvalidRequest("'messages' must contain the word 'json' in some form, to "
                                 "use 'response_format' of type 'json_object'.",
                                 code="invalid_value", param="messages")
        self._check_tools()

    def _check_tools(self) -> None:
        tools = self.tools or []
        names = [tool.function.name for tool in tools]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidRequest(f"Invalid 'tools': the function name '{name}' is used "
                                     "more than once.", code="invalid_value",
                                     param=f"tools[{i}].function.name")
            function = tools[i].function
            if function.strict:
                _check_strict(function.parameters, f"tools[{i}].function.parameters",
                              f"function '{name}'")
        for param in ("tool_choice", "parallel_tool_calls"):
            if getattr(self, param) is not None and not tools:
                raise InvalidRequest(f"Invalid value for '{param}': '{param}' is only allowed "
                                     "when 'tools' are specified.", code="invalid_value",
                                     param=param)
        self.tool_mode()

    def tool_mode(self) -> tuple[str, str | None]:
        """How tools may be used: ("none" | "auto" | "required", None) or ("function",
        name); InvalidRequest for a `tool_choice` of any other shape."""
        choice = self.tool_choice
        if not self.tools:
            return "none", None
        if choice is None:
            return "auto", None  # OpenAI's default when tools are given
        if isinstance(choice, str) and choice in ("none", "auto", "required"):
            return choice, None
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if (not isinstance(choice, dict) or choice.get("type") != "function"
                or not isinstance(name, str)):
            raise InvalidRequest("Invalid value for 'tool_choice': expected 'none', 'auto', "
                                 "'required' or {'type': 'function', 'function': {'name': "
                                 "...}}.", code="invalid_value", param="tool_choice")
        if name not in {tool.function.name for tool in self.tools}:
            raise InvalidRequest(f"Invalid value for 'tool_choice': no function named "
                                 f"'{name}' is in 'tools'.", code="invalid_value",
                                 param="tool_choice.function.name")
        return "function", name

    @property
    def json_schema(self) -> JsonSchemaFormat | None:
        fmt = self.response_format
        return fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content)
    return content or ""


def _check_strict(schema: dict[str, Any] | None, param: str, what: str) -> None:
    try:
        check_strict(schema, param)
    except StrictSchemaError as exc:
        raise InvalidRequest(f"Invalid schema for {what}: at '{exc.where}', {exc}",
                             code="invalid_value", param=exc.where) from exc


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def completion_object(
    *, model: str, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int,
    created: int, cached_tokens: int = 0, reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """A full `chat.completion` object, shaped like OpenAI's."""
    return {
        "id": ids.chat_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_object(prompt_tokens, completion_tokens, cached_tokens,
                              reasoning_tokens),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
    }


def usage_object(prompt: int, completion: int, cached: int = 0,
                 reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def choice_object(
    *, index: int, message: dict[str, Any], finish_reason: str,
    logprobs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
