"""Streaming validation of a batch input file, one line at a time.

Memory stays flat in the file's size: only a fixed-size digest of each `custom_id` is kept (for
duplicate detection), plus the chunk plan and at most `max_listed_errors` error entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchd.serving.endpoints import OPERATIONS, wrong_kind
from batchd.store.records import ChunkPlan

REQUIRED_KEYS = ("custom_id", "method", "url", "body")
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, kw_only=True)
class LineError:
    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param,
                "line": self.line}


@dataclass(kw_only=True)
class ValidationOutcome:
    plans: list[ChunkPlan]
    total: int
    model: str | None
    errors: list[LineError] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)  # per served model id

    @property
    def ok(self) -> bool:
        return not self.errors


class InputValidator:
    """Feed it the file's lines in order; `finish()` says whether the batch may run.
    `served_model` maps a requested name to the id of the model serving it (None: unknown);
    `capabilities` to what that model is for (chat, embeddings)."""

    def __init__(
        self, *, endpoint: str, served_model: Callable[[str], str | None],
        capabilities: Callable[[str], frozenset[str]] = lambda _: frozenset({"chat"}),
        max_requests: int, chunk_lines: int, max_listed_errors: int,
    ) -> None:
        self.endpoint = endpoint
        self.operation = OPERATIONS[endpoint]
        self.served_model = served_model
        self.capabilities = capabilities
        self._tokens: dict[str, int] = {}
        self.max_requests = max_requests
        self.chunk_lines = chunk_lines
        self.max_listed_errors = max_listed_errors
        self._offset = 0
        self._line_no = 0
        self._total = 0
        self._seen: set[bytes] = set()
        self._models: set[str] = set()
        self._errors: list[LineError] = []
        self._unlisted_errors = 0
        self._plans: list[ChunkPlan] = []
        self._open: tuple[int, int, int] | None = None  # (byte_start, line_start, n_lines)
        self.too_many = False

    @property
    def lines_read(self) -> int:
        return self._line_no

    def feed(self, raw: bytes) -> dict[str, Any] | None:
        """Take the next line; returns it parsed if it is a request that may run (None for
        a blank line, a wrong one, or one past the limit)."""
        start = self._offset
        self._offset += len(raw)
        self._line_no += 1
        if start == 0 and raw.startswith(UTF8_BOM):  # as editors on Windows save files
            raw, start = raw[len(UTF8_BOM):], len(UTF8_BOM)  # chunks begin after it
        if self.too_many or not raw.strip():
            return None  # blank lines are not requests
        self._total += 1
        if self._total > self.max_requests:
            self.too_many = True
            return None
        checked = self._check(raw)
        if isinstance(checked, LineError):
            self._record(checked)
        if self._open is None:
            self._open = (start, self._line_no, 0)
        byte_start, line_start, n = self._open
        self._open = (byte_start, line_start, n + 1)
        if n + 1 >= self.chunk_lines:
            self._close_chunk()
        return None if isinstance(checked, LineError) else checked

    def _close_chunk(self) -> None:
        if self._open is None:
            return
        byte_start, line_start, n = self._open
        self._plans.append(ChunkPlan(chunk_no=len(self._plans), byte_start=byte_start,
                                     byte_end=self._offset, line_start=line_start, n_lines=n))
        self._open = None

    def _record(self, error: LineError) -> None:
        if len(self._errors) < self.max_listed_errors:
            self._errors.append(error)
        else:
            self._unlisted_errors += 1

    def _check(self, raw: bytes) -> LineError | dict[str, Any]:
        """The line's error, or the line parsed."""
        line = self._line_no
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return LineError(code="invalid_json_line", line=line,
                             message="This line is not parseable as valid JSON.")
        if not isinstance(item, dict):
            return LineError(code="invalid_json_line", line=line,
                             message="This line is valid JSON but not a JSON object.")
        for key in REQUIRED_KEYS:
            if key not in item or item[key] is None:
                return LineError(code="missing_required_parameter", param=key, line=line,
                                 message=f"Missing required parameter: '{key}'.")
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not custom_id:
            return LineError(code="invalid_type", param="custom_id", line=line,
                             message="'custom_id' must be a non-empty string.")
        if item["method"] != "POST":
            return LineError(code="invalid_value", param="method", line=line,
                             message="Only the POST method is supported in the Batch API.")
        if item["url"] != self.endpoint:
            return LineError(code="invalid_url", param="url", line=line,
                             message="The URL provided for this request does not match the "
                                     "batch endpoint.")
        body = item["body"]
        if not isinstance(body, dict):
            return LineError(code="invalid_type", param="body", line=line,
                             message="'body' must be a JSON object.")
        model = body.get("model")
        if model is None:
            return LineError(code="invalid_request", param="body.model", line=line,
                             message="Model parameter is required.")
        served = self.served_model(model) if isinstance(model, str) else None
        if served is None:
            return LineError(code="model_not_found", param="body.model", line=line,
                             message=f"The provided model '{model}' is not supported by the "
                                     "Batch API.")
        operation = self.operation
        serves = self.capabilities(model)
        if operation.capability not in serves:
            return LineError(code="model_not_found", param="body.model", line=line,
                             message=wrong_kind(operation, model, serves))
        required = operation.required
        if body.get(required) is None:
            return LineError(code="invalid_request", param=f"body.{required}", line=line,
                             message=f"{required.capitalize()} parameter is required.")
        if body.get("stream") is True:
            return LineError(code="streaming_unsupported", param="body.stream", line=line,
                             message=f"{operation.title}: Streaming is not supported in the "
                                     "Batch API.")
        digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
        if digest in self._seen:
            return LineError(code="duplicate_custom_id", param="custom_id", line=line,
                             message=f"The custom_id '{custom_id}' is used more than once; "
                                     "each request in a batch needs a unique custom_id.")
        self._seen.add(digest)
        self._models.add(model)
        self._tokens[served] = self._tokens.get(served, 0) + operation.estimate(body)
        return item

    def finish(self) -> ValidationOutcome:
        self._close_chunk()
        errors = list(self._errors)
        if self.too_many:
            errors.insert(0, LineError(
                code="too_many_tasks",
                message=f"The input file has more than the maximum of {self.max_requests:,} "
                        "requests per batch.",
            ))
        elif self._total == 0:
            errors.append(LineError(code="empty_file",
                                    message="The input file contains no requests."))
        if self._unlisted_errors:
            errors.append(LineError(
                code="too_many_errors",
                message=f"{self._unlisted_errors} more line(s) have errors that are not "
                        "listed here.",
            ))
        model = next(iter(self._models)) if len(self._models) == 1 else None
        return ValidationOutcome(plans=self._plans, total=self._total, model=model,
                                 errors=errors, tokens=dict(self._tokens))
