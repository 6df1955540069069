"""Batch input lines and the instant models they name: what most tests submit."""

from __future__ import annotations

import json
from typing import Any

ENDPOINT = "/v1/chat/completions"

INSTANT_MODELS = """
models:
  - id: instant-model
    engine: instant
    aliases: [org/instant-alias, org/second-alias]
    fail_marker: FAIL-ME
    hang_marker: HANG-ME
  - id: slow-model
    engine: instant
    delay_seconds: 0.05
  - id: embed-model
    engine: instant
    serves: [embeddings]
    embedding_dimensions: 8
  - id: both-model
    engine: instant
    serves: [chat, embeddings]
"""


def batch_line(custom_id: str, content: str = "hello there", model: str = "instant-model",
               **body: Any) -> str:
    """One chat request as a line of a batch input file."""
    payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                       "body": payload})
