"""Server-sent events as OpenAI streams them: `data: {json}` events, `[DONE]`, and a failure
after the headers went out reported in-band as an error envelope."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from batchd.errors import BatchdError, ServerError
from batchd.openai.base import SYSTEM_FINGERPRINT

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def data_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_event(kind: str, payload: dict[str, Any]) -> bytes:
    """An event with a name line, as the Responses API sends them."""
    return b"event: " + kind.encode() + b"\n" + data_event(payload)


def chunk_writer(*, chunk_id: str, object_type: str, created: int, model: str,
                 include_usage: bool) -> Callable[..., bytes]:
    """`chunk(choices, usage=None)`: one chunk of a streamed chat or text completion. With
    `stream_options.include_usage` every chunk carries `usage` (null but on the last)."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": chunk_id, "object": object_type, "created": created, "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return data_event(payload)

    return chunk


def error_event(exc: Exception, what: str) -> bytes:
    """A failure after a stream's headers went out, as OpenAI reports it: a data event
    holding the error envelope. An internal failure's text is the log's, not the client's."""
    if not isinstance(exc, BatchdError):
        log.error("a streamed %s failed", what, exc_info=exc)
        exc = ServerError("The server had an error while processing your request.",
                          code="internal_error")
    return data_event(exc.envelope())
