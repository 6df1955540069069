"""OpenAI's rule for `metadata`, shared by batches and responses: at most 16 string pairs,
short keys, bounded values."""

from __future__ import annotations

from typing import Any

from batchd.errors import InvalidRequest

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"Invalid 'metadata': at most {MAX_METADATA_PAIRS} key-value "
                             "pairs are allowed.", code="invalid_value", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest(f"Invalid 'metadata': keys can be at most {MAX_METADATA_KEY} "
                                 "characters long.", code="invalid_value", param="metadata")
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid type for 'metadata.{key}': expected a string, but "
                                 f"got {type(value).__name__}.", code="invalid_type",
                                 param=f"metadata.{key}")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest(f"Invalid 'metadata.{key}': values can be at most "
                                 f"{MAX_METADATA_VALUE} characters long.",
                                 code="invalid_value", param=f"metadata.{key}")
    return dict(metadata)
