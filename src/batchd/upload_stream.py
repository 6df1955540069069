"""Reading a multipart file upload straight from the request into the blob store.

Starlette's form parser spools the file part into a temporary file, which the upload then had
to copy into the blob store: every byte written twice. Here python-multipart's streaming parser
(the one Starlette uses) runs over the body as it arrives and the file part goes directly into
a blob writer, in pieces of about 1 MiB written from a thread. The other fields (`purpose`,
`expires_after[...]`) may come before or after the file — curl sends them in the order given —
so they are checked once the body has ended; a refused upload leaves nothing behind. Only the
fields the endpoint knows are taken, each once, and every byte of the body counts against the
size limit: what a body can make the server hold is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from batchd.errors import InvalidRequest
from batchd.shielding import finish_even_if_cancelled

_FLUSH = 1024 * 1024
_MAX_FIELD = 64 * 1024
# What a body may hold beyond its file: the few known fields, part headers and boundaries.
_FRAMING = 64 * 1024


def _missing(name: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{name}'.",
                          code="missing_required_parameter", param=name)


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)  # a text field's value


@dataclass
class UploadForm:
    """What the body held: its text fields, and the file (already stored) with its size."""

    fields: dict[str, str]
    filename: str
    size: int


class StreamedUpload:
    """One upload: `receive` parses the body and stores the file part under `key`; on any
    error (or cancellation) the partly written object is discarded."""

    def __init__(self, *, open_writer: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
                 limit_for: Callable[[str | None], int],
                 too_large: Callable[[int], Exception], known_fields: tuple[str, ...],
                 file_field: str = "file") -> None:
        self._open_writer = open_writer
        self._file_field = file_field  # the part that holds the file's bytes
        self._known_fields = known_fields  # besides `file`: any other field is a 400
        self._limit_for = limit_for  # the size limit, given the purpose if already known
        self._too_large = too_large
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = self._value = b""
        self._part = _Part()
        self._fields: dict[str, str] = {}
        self._filename: str | None = None
        self._size = 0  # of the file
        self._body_bytes = 0  # of the whole body: parts, headers and boundaries
        self._file_data = bytearray()  # received, not yet written
        self._file_ended = False
        self._writer: contextlib.AbstractContextManager[BinaryIO] | None = None
        self._out: BinaryIO | None = None
        self._errors: list[Exception] = []

    async def receive(self, content_type: str | None,
                      body: AsyncIterator[bytes]) -> UploadForm:
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise _missing(self._file_field)
        parser = MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        })
        try:
            async for piece in body:
                self._body_bytes += len(piece)
                try:
                    parser.write(piece)
                except ValueError as exc:  # python-multipart's parse errors are ValueErrors
                    raise InvalidRequest(f"Could not parse the multipart body: {exc}",
                                         code="invalid_multipart",
                                         param=self._file_field) from exc
                await self._drain()
            parser.finalize()
            if not self._file_ended:
                raise _missing(self._file_field)
            await self._close(None)
        except BaseException as exc:
            await self._close(exc)
            raise
        assert self._filename is not None
        return UploadForm(fields=self._fields, filename=self._filename, size=self._size)

    # --- parser callbacks: they only gather; `_drain` does the I/O ---------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self._headers = []

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field = self._value = b""

    def _on_headers_finished(self) -> None:
        for name, value in self._headers:
            if name == b"content-disposition":
                _, options = parse_options_header(value)
                if b"name" in options:
                    self._part.name = options[b"name"].decode("utf-8", "replace")
                if b"filename" in options:
                    self._part.filename = options[b"filename"].decode("utf-8", "replace")
        field_name = self._part.name
        if field_name == self._file_field:
            if self._filename is not None:
                self._errors.append(InvalidRequest(
                    "Upload one file per request.", code="invalid_request",
                    param=self._file_field))
            self._part.is_file = True
            self._filename = self._part.filename or "upload"
        elif field_name not in self._known_fields:
            self._errors.append(InvalidRequest(
                f"Unrecognized request argument supplied: {field_name or '(a part with no name)'}",
                code="unknown_parameter", param=field_name))
        elif field_name in self._fields:
            self._errors.append(InvalidRequest(
                f"The form field '{field_name}' is given more than once.",
                code="invalid_request", param=field_name))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.is_file:
            self._file_data += data[start:end]
            self._size += end - start
            return
        part.data += data[start:end]
        if len(part.data) > _MAX_FIELD and not self._errors:
            self._errors.append(InvalidRequest(
                f"Form field '{part.name}' is too long.", code="invalid_value", param=part.name))

    def _on_part_end(self) -> None:
        part = self._part
        if part.is_file:
            self._file_ended = True
        elif part.name is not None and not self._errors:
            self._fields[part.name] = part.data.decode("utf-8", "replace")

    # --- I/O --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._errors:
            raise self._errors[0]
        limit = self._limit_for(self._fields.get("purpose"))
        if self._size > limit or self._body_bytes > limit + _FRAMING:
            raise self._too_large(limit)
        if len(self._file_data) < _FLUSH and not (self._file_ended and self._file_data):
            return
        if self._out is None:
            self._writer = self._open_writer()
            self._out = self._writer.__enter__()
        piece = bytes(self._file_data)
        self._file_data.clear()
        await asyncio.to_thread(self._out.write, piece)

    async def _close(self, error: BaseException | None) -> None:
        if error is None:
            await self._drain()  # the rest of the file, after the limit check
            if self._out is None:  # an empty file part still makes an (empty) object
                self._writer = self._open_writer()
                self._out = self._writer.__enter__()
        writer, self._writer, self._out = self._writer, None, None
        if writer is None:
            return
        if error is None:
            await asyncio.to_thread(writer.__exit__, None, None, None)  # fsync + rename
        else:  # aborts the write (on S3 a request: off the loop, finished even if cancelled)
            with contextlib.suppress(BaseException):
                await finish_even_if_cancelled(asyncio.to_thread(
                    writer.__exit__, type(error), error, error.__traceback__))
