"""Secrets never reach a log line: API keys and webhook signing secrets are masked."""

from __future__ import annotations

from batchd.log_redaction import MASK, redact


def test_keys_and_webhook_secrets_are_masked() -> None:
    line = ("created whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw for bd-0123456789abcdef and "
            "sk-abcdefghijklmnop; GET /x?api_key=hunter2&limit=3")
    masked = redact(line)
    for secret in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "0123456789abcdef", "abcdefghijklmnop",
                   "hunter2"):
        assert secret not in masked
    assert masked.count(MASK) == 4 and "limit=3" in masked
