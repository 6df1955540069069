"""Typed errors raised by services; the API layer turns them into OpenAI error envelopes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# The names pydantic gives the members of a union in an error's location (`input.str`,
# `prompt.list[int]`): they are not parameters and are left out of `param`.
_UNION_MEMBER = re.compile(r"(str|int|float|bool|none|[a-z-]+\[.*\])")


def param_path(loc: Sequence[object]) -> str | None:
    """A validation error's location as OpenAI names parameters: `messages[0].role`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _UNION_MEMBER.fullmatch(str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


def error_envelope(message: str, *, error_type: str, param: str | None,
                   code: str | None) -> dict[str, dict[str, str | None]]:
    """OpenAI's error body, the same in an HTTP answer, a stream's last event and a line of
    a batch's error file."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class BatchdError(Exception):
    """An error with an OpenAI-shaped description. Subclasses fix the HTTP status."""

    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return error_envelope(self.message, error_type=self.error_type, param=self.param,
                              code=self.code)


class InvalidRequest(BatchdError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthenticated(BatchdError):
    status_code = 401
    error_type = "invalid_request_error"


class PermissionDenied(BatchdError):
    status_code = 403
    error_type = "invalid_request_error"


class TooManyRequests(BatchdError):
    status_code = 429
    error_type = "invalid_request_error"


class RateLimited(TooManyRequests):
    """Over a rate limit (requests per minute, failed authentications): OpenAI's type."""

    error_type = "requests"


class NotFound(BatchdError):
    status_code = 404
    error_type = "invalid_request_error"


class Conflict(BatchdError):
    """A state conflict that will not resolve by retrying (sent with x-should-retry: false)."""

    status_code = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param, headers={"x-should-retry": "false"})


class StorageFull(BatchdError):
    status_code = 507
    error_type = "server_error"


class ServiceUnavailable(BatchdError):
    """The database or the object store cannot be reached for now: retry later. Nothing
    was changed by the request that got this."""

    status_code = 503
    error_type = "server_error"
    retry_after_seconds = 5

    def __init__(self, message: str, *, code: str | None = "service_unavailable",
                 param: str | None = None) -> None:
        super().__init__(message, code=code, param=param,
                         headers={"retry-after": str(self.retry_after_seconds)})


class ServerError(BatchdError):
    status_code = 500
    error_type = "server_error"


def invalid_request_of(error: Mapping[str, Any], loc: Sequence[object]) -> InvalidRequest:
    """OpenAI's 400 for one pydantic validation error, found at `loc` of the request."""
    param = param_path(loc)
    kind = str(error.get("type", ""))
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.",
                              code="missing_required_parameter", param=param)
    if kind == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request. (HINT: This "
                              "likely means you aren't using your HTTP library correctly.)",
                              code="invalid_json")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}",
                              code="unknown_parameter", param=param)
    if kind == "unsupported_parameter":
        return InvalidRequest(f"Unsupported parameter: '{param}' is not supported by this "
                              "server yet.", code="unsupported_parameter", param=param)
    code = "invalid_type" if kind.endswith("_type") or "parsing" in kind else "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {error.get('msg', 'invalid')}.",
                          code=code, param=param)
