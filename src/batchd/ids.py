"""Object identifiers, shaped like OpenAI's (`file-…`, `batch_…`, `batch_req_…`)."""

from __future__ import annotations

import secrets


def _token(n: int = 24) -> str:
    return secrets.token_hex(n // 2)


def file_id() -> str:
    return f"file-{_token()}"


def batch_id() -> str:
    return f"batch_{_token()}"


def batch_request_id() -> str:
    return f"batch_req_{_token()}"


def request_id() -> str:
    return f"req_{_token()}"


def chat_completion_id() -> str:
    return f"chatcmpl-{_token()}"


def worker_id() -> str:
    return f"worker-{_token(12)}"
