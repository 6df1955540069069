"""Lines of the output and error files (OpenAI's BatchRequestOutput), as bytes."""

from __future__ import annotations

from typing import Any

import orjson

from batchd import ids
from batchd.errors import error_envelope


def success_line(custom_id: str, body: dict[str, Any]) -> bytes:
    return _line(custom_id, {"status_code": 200, "request_id": ids.request_id(), "body": body},
                 None)


def http_error_line(
    custom_id: str, *, status_code: int, message: str, error_type: str,
    code: str | None, param: str | None,
) -> bytes:
    """A request that got an HTTP error: the error body sits in `response`, `error` is null."""
    body = error_envelope(message, error_type=error_type, param=param, code=code)
    return _line(custom_id, {"status_code": status_code, "request_id": ids.request_id(),
                             "body": body}, None)


def stop_error_line(custom_id: str, *, code: str, message: str) -> bytes:
    """A request that never ran (batch cancelled, expired or failed): `response` is null."""
    return _line(custom_id, None, {"code": code, "message": message})


STOP_MESSAGES = {
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_failed": "This request was not executed because the batch failed.",
    "request_failed": "This request was not completed: the workers running it stopped "
                      "(crashed or hung) too many times, so it was not retried again.",
}


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    return orjson.dumps({"id": ids.batch_request_id(), "custom_id": custom_id,
                         "response": response, "error": error}) + b"\n"
