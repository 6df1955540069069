"""Credentials never reach a log line: API keys (ours, `sk-` style ones and the configured
BATCHD_API_KEY) and the values of credential-like query parameters are masked, wherever in a
record they appear (uvicorn's access log prints the whole query string)."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|secret|password|auth|authorization)"
    r"=)[^&;\s\"']*")
_KEY_LIKE = re.compile(r"\b((?:bd|sk)-|whsec_)[A-Za-z0-9_\-+/=]{8,}")
MASK = "[REDACTED]"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)
    return _KEY_LIKE.sub(lambda m: m.group(1) + MASK, text)


class RedactCredentials(logging.Filter):
    """Masks credentials in a record's message and arguments (it never drops a record)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a, self.secrets) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v, self.secrets) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        return True


def uvicorn_log_config(secrets: tuple[str, ...]) -> dict[str, Any]:
    """uvicorn's own logging set-up, with every handler masking credentials."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactCredentials, "secrets": secrets}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config


def redact_root_handlers(secrets: tuple[str, ...]) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCredentials(secrets))
