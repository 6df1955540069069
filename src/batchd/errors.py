"""Typed errors raised by services; the API layer turns them into OpenAI error envelopes."""

from __future__ import annotations


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
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


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


class ServerError(BatchdError):
    status_code = 500
    error_type = "server_error"
