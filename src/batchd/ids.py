"""Object identifiers, shaped like OpenAI's (`file-…`, `batch_…`, `batch_req_…`)."""

from __future__ import annotations

import itertools
import secrets


def _token(n: int = 24) -> str:
    return secrets.token_hex(n // 2)


def file_id() -> str:
    return f"file-{_token()}"


def batch_id() -> str:
    return f"batch_{_token()}"


# Ids minted per request (millions per batch) need to be unique, not secret: a random
# per-process prefix and a counter cost a fraction of a fresh random token each time.
_PROCESS = secrets.token_hex(6)
# The prefix and the next counter value, formatted in C: no Python frame per id.
_SERIALS = map(f"{_PROCESS}{{:012x}}".format, itertools.count())


def batch_request_id() -> str:
    return f"batch_req_{next(_SERIALS)}"


def request_id() -> str:
    return f"req_{next(_SERIALS)}"


def chat_completion_id() -> str:
    return f"chatcmpl-{next(_SERIALS)}"


def text_completion_id() -> str:
    return f"cmpl-{next(_SERIALS)}"


def response_id() -> str:
    return f"resp_{next(_SERIALS)}"


def output_message_id() -> str:
    return f"msg_{next(_SERIALS)}"


def worker_id() -> str:
    return f"worker-{_token(12)}"


def webhook_endpoint_id() -> str:
    return f"whep_{_token()}"


def event_id() -> str:
    return f"evt_{_token()}"


def delivery_id() -> str:
    return f"whd_{_token()}"


def upload_id() -> str:
    return f"upload_{_token()}"


def upload_part_id() -> str:
    return f"part_{_token()}"
