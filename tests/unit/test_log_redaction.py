"""Secrets never reach a log line: API keys and webhook signing secrets are masked."""

from __future__ import annotations

import logging
import sys
from urllib.parse import quote, unquote

from batchd.log_redaction import MASK, RedactCredentials, redact


def test_keys_and_webhook_secrets_are_masked() -> None:
    line = ("created whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw for bd-0123456789abcdef and "
            "sk-abcdefghijklmnop; GET /x?api_key=hunter2&limit=3")
    masked = redact(line)
    for secret in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "0123456789abcdef", "abcdefghijklmnop",
                   "hunter2"):
        assert secret not in masked
    assert masked.count(MASK) == 4 and "limit=3" in masked


def test_percent_encoded_keys_are_masked_in_any_parameter_path_or_case() -> None:
    key = "0123456789abcdef"
    lines = [
        f"GET /v1/models?api_key=bd%2D{key} HTTP/1.1",          # a credential-named parameter
        f"GET /v1/models?q=bd%2D{key}&limit=3 HTTP/1.1",         # any other parameter
        f"GET /v1/models?q=%62d-{key} HTTP/1.1",                 # the prefix itself encoded
        f"GET /v1/models?q=%62%64%2d{key} HTTP/1.1",               # any case
        f"GET /v1/models?q=%73k%2D{key} HTTP/1.1",               # sk-
        f"GET /v1/models?q=bd%252D{key} HTTP/1.1",               # encoded twice
        f"GET /v1/files/bd%2D{key}/content HTTP/1.1",            # in the path
        f"GET /v1/models?api%5Fkey=hunter2{key} HTTP/1.1",       # the name encoded
        f"GET /v1/models?X-Api-Key=hunter2{key} HTTP/1.1",       # other credential names
        f"GET /v1/models?client_secret=hunter2{key} HTTP/1.1",
        f"GET /v1/models?q=bd-{key[:4]}%41{key[4:]} HTTP/1.1",  # an escape inside the key
    ]
    for line in lines:
        masked = redact(line)
        assert key not in masked and key not in unquote(unquote(masked)), line
        assert MASK in masked and "HTTP/1.1" in masked
    assert redact(f"GET /v1/models?q=bd%2D{key}&limit=3").endswith("&limit=3")


def test_the_configured_key_is_masked_percent_encoded_too() -> None:
    secret = "my/own+secret=key"
    masked = redact(f"GET /x?q={quote(secret, safe='')}&y=1", (secret,))
    assert "own" not in masked and MASK in masked


def test_text_without_credentials_is_left_alone() -> None:
    for line in ("GET /v1/files?after=file-abc&limit=20 HTTP/1.1",
                 "GET /v1/models/org%2Fmodel HTTP/1.1", "100% done, 50%2F"):
        assert redact(line) == line


def test_credential_headers_are_masked() -> None:
    for line in ("headers: {'authorization': 'Bearer my-own-token-value'}",
                 "Authorization: Basic bXktb3duLXRva2VuLXZhbHVl",
                 "[(b'x-api-key', b'my-own-token-value')]"):
        masked = redact(line)
        assert "my-own-token-value" not in masked and "bXktb3duLXRva2VuLXZhbHVl" not in masked
        assert MASK in masked


def test_the_filter_masks_arguments_objects_and_tracebacks() -> None:
    key = "bd-0123456789abcdef"

    class Url:
        def __str__(self) -> str:
            return f"http://x/y?q={key.replace('-', '%2D')}"

    try:
        raise ValueError(f"bad url /v1/models?q={key.replace('-', '%2d')}")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "%s %s %d",
                                   (f"?token={key}", Url(), 7), sys.exc_info())
    RedactCredentials().filter(record)
    text = logging.Formatter().format(record)
    assert "0123456789abcdef" not in text and text.count(MASK) >= 3 and " 7" in text
