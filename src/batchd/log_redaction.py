"""Credentials never reach a log line: API keys (ours, `sk-` style ones and the configured
BATCHD_API_KEY), the values of credential-like query parameters and headers are masked,
wherever in a record they appear (uvicorn's access log prints the whole path and query
string), percent-encoded or not."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import unquote

# A query parameter whose name says it carries a credential (`api_key`, `x-api-key`,
# `access_token`, `client_secret`, `password`, `auth`, …): its value is masked, whatever it is.
_QUERY_SECRET = re.compile(
    r"(?i)([?&;][\w.\-\[\]]*(?:key|token|secret|passw|auth|signature|credential)"
    r"[\w.\-\[\]]*=)[^&;\s\"']*")
# A header that carries a credential, as `name: value`, `name=value` or a repr'd pair.
_HEADER_SECRET = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|cookie)(['\"]?\s*[:=,]\s*(?:b?['\"])?)"
    r"((?:bearer|basic|token)\s+)?[^\s'\",;]+")
_KEY_LIKE = re.compile(r"\b((?:bd|sk)-|whsec_)[A-Za-z0-9_\-+/=]{8,}")
# A run of URL-ish text with a percent escape in it: `%62d-…` is `bd-…` to any server, so
# such a run is checked again once decoded (twice encoded too). Runs are found first and
# searched for an escape after (one pattern for both backtracks: quadratic on a long run
# with a `%` but no escape, and a client chooses the path uvicorn logs).
_RUN = re.compile(r"[^\s\"'<>]+")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_DECODE_ROUNDS = 3
MASK = "[REDACTED]"


def _redact_plain(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, text)
    text = _HEADER_SECRET.sub(lambda m: m.group(1) + m.group(2) + (m.group(3) or "") + MASK,
                              text)
    return _KEY_LIKE.sub(lambda m: m.group(1) + MASK, text)


def _redact_encoded(match: re.Match[str], secrets: tuple[str, ...]) -> str:
    """The run as it was when it holds no credential once decoded; else decoded and masked
    (its encoded form would still spell the credential)."""
    run = match.group(0)
    decoded = run
    for _ in range(_DECODE_ROUNDS):
        once = unquote(decoded, errors="replace")
        if once == decoded:
            break
        decoded = once
    masked = _redact_plain(decoded, secrets)
    return run if masked == decoded else masked


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    if "%" in text:
        text = _RUN.sub(lambda m: _redact_encoded(m, secrets)
                        if _ESCAPE.search(m.group(0)) else m.group(0), text)
    return _redact_plain(text, secrets)


class RedactCredentials(logging.Filter):
    """Masks credentials in a record's message and arguments (it never drops a record)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatted here, once, as every formatter would (it keeps `exc_text`), so that an
            # exception's message (a URL with its query) is masked too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True

    def _arg(self, value: object) -> object:
        if isinstance(value, str):
            return redact(value, self.secrets)
        if value is None or isinstance(value, int | float | bytes):
            return value  # numbers keep their %d; bytes are not printed as text
        # An object printed with %s (a URL, a request): its text, masked, when that differs.
        text = str(value)
        masked = redact(text, self.secrets)
        return value if masked == text else masked


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
