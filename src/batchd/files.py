"""File operations: upload (streamed into the blob store), read, list, delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from batchd import ids
from batchd.backends import outage
from batchd.clock import Clock
from batchd.errors import InvalidRequest, NotFound
from batchd.openai.files import FileObject
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.store.records import FileRecord
from batchd.store.roles import FileVerbs
from batchd.upload_stream import StreamedUpload, UploadForm

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# The form fields an upload may have besides `file`.
UPLOAD_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")
BATCH_FILE_EXPIRY = 30 * 24 * 3600


def blob_key(file_id: str) -> str:
    return f"files/{file_id}"


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def file_object(record: FileRecord) -> FileObject:
    """The wire object of a stored file."""
    return FileObject(id=record.id, bytes=record.bytes, created_at=record.created_at,
                      expires_at=record.expires_at, filename=record.filename,
                      purpose=record.purpose, status=record.status)


class FileService:
    def __init__(
        self, *, store: FileVerbs, blobs: BlobStore, clock: Clock, settings: Settings
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.settings = settings

    def upload_limit(self, purpose: str | None, tier_limit: int | None, *,
                     server_limit: int | None = None) -> int:
        """The most bytes a file may have: the server's (`max_upload_bytes` unless said),
        the tier's and, for batch input, the Batch API's."""
        limit = self.settings.max_upload_bytes if server_limit is None else server_limit
        if tier_limit is not None:
            limit = min(limit, tier_limit)
        if purpose == "batch":
            limit = min(limit, self.settings.max_batch_file_bytes)
        return limit

    async def upload(
        self, *, owner: str, content_type: str | None, body: AsyncIterator[bytes],
        tier_limit: int | None = None,
    ) -> FileObject:
        """Store a multipart upload (fields `file`, `purpose`, `expires_after[...]`) as it
        arrives; nothing is kept of a refused or interrupted upload."""
        file_id = ids.file_id()
        key = blob_key(file_id)
        form = await StreamedUpload(
            open_writer=lambda: self.blobs.writer(key),
            limit_for=lambda purpose: self.upload_limit(purpose, tier_limit),
            too_large=_too_large,
            known_fields=UPLOAD_FIELDS,
        ).receive(content_type, body)
        try:
            purpose, expires_after_seconds = _check_fields(form)
            filename = display_name(form.filename)
            if purpose == "batch" and not filename.lower().endswith(".jsonl"):
                raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl",
                                     code="invalid_file_format", param="file")
            now = int(self.clock.now())
            expires_at = None
            if expires_after_seconds is not None:
                expires_at = now + expires_after_seconds
            elif purpose == "batch":
                expires_at = now + BATCH_FILE_EXPIRY
            record = await self.store.insert_file(FileRecord(
                id=file_id, owner=owner, purpose=purpose, filename=filename,
                bytes=form.size, created_at=now, expires_at=expires_at, status="processed",
                blob_key=key,
            ))
        except BaseException as exc:
            # After an outage the record may have been committed with the answer lost: keep
            # the bytes (an orphan costs space; a record without its bytes loses a file).
            if outage(exc) is None:
                await asyncio.to_thread(self.blobs.delete, key)
            raise
        return file_object(record)

    async def get(self, *, owner: str | None, file_id: str) -> FileRecord:
        record = await self.store.get_file(file_id, owner=owner)
        if record is None:
            raise _not_found(file_id)
        return record

    async def list(
        self, *, owner: str | None, purpose: str | None, limit: int, order: str,
        after: str | None,
    ) -> tuple[list[FileObject], bool]:
        records, has_more = await self.store.list_files(
            owner=owner, purpose=purpose, limit=limit, ascending=order == "asc", after=after
        )
        return [file_object(r) for r in records], has_more

    async def delete(self, *, owner: str | None, file_id: str) -> None:
        """Hide the file at once; its bytes go when no running batch still reads them."""
        record = await self.store.delete_file(file_id, owner=owner, now=int(self.clock.now()))
        if record is None:
            raise _not_found(file_id)
        await self.purge_deleted()

    async def purge_deleted(self) -> int:
        purged = 0
        for record in await self.store.deleted_files_unused():
            await asyncio.to_thread(self.blobs.delete, record.blob_key)
            await self.store.forget_file(record.id)
            purged += 1
        return purged

    async def content(
        self, *, owner: str | None, file_id: str
    ) -> tuple[FileRecord, Iterator[bytes]]:
        record = await self.get(owner=owner, file_id=file_id)
        # Raises a clear error now if the bytes are gone (off the loop: on S3, a request).
        await asyncio.to_thread(self.blobs.size, record.blob_key)
        return record, self.blobs.read_range(record.blob_key)

    def read_from(self, record: FileRecord, start: int) -> Iterator[bytes]:
        """The file's bytes from offset `start` on, in pieces, read as they are iterated
        (blocking: iterate off the event loop)."""
        return self.blobs.read_range(record.blob_key, start)


def _check_fields(form: UploadForm) -> tuple[str, int | None]:
    """The upload's purpose and its expires_after seconds (if given), checked."""
    fields = form.fields
    purpose = fields.get("purpose")
    if purpose is None:
        raise InvalidRequest("Missing required parameter: 'purpose'.",
                             code="missing_required_parameter", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid value: '{purpose}'. Supported values are: "
            f"{', '.join(repr(p) for p in UPLOAD_PURPOSES)}.",
            code="invalid_value", param="purpose",
        )
    anchor = fields.get("expires_after[anchor]")
    raw_seconds = fields.get("expires_after[seconds]")
    if raw_seconds is None:
        return purpose, None
    try:
        seconds = int(raw_seconds)
    except ValueError:
        raise InvalidRequest(
            f"Invalid value for 'expires_after[seconds]': {raw_seconds!r} is not an integer.",
            code="invalid_type", param="expires_after.seconds") from None
    if anchor not in (None, "created_at"):
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.",
                             code="invalid_value", param="expires_after.anchor")
    if not 3600 <= seconds <= 2_592_000:
        raise InvalidRequest("expires_after[seconds] must be between 3600 and 2592000.",
                             code="invalid_value", param="expires_after.seconds")
    return purpose, seconds


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"File is too large. The maximum size is {_mib(limit)}.",
                          code="file_too_large", param="file")


MAX_FILENAME = 255


def display_name(filename: str) -> str:
    """The name kept and shown back for an uploaded file (`POST /v1/files` and the Uploads
    API alike); never used as a path. Control and other unprintable characters (escape
    sequences, bidi overrides) are dropped, since the name reaches other people's terminals
    and pages; at most 255 characters are kept, with a short extension kept when the name
    is cut, since `.jsonl` decides what a batch accepts."""
    cleaned = "".join(ch for ch in filename if ch.isprintable())
    if len(cleaned) > MAX_FILENAME:
        stem, dot, extension = cleaned.rpartition(".")
        if dot and stem and len(extension) <= 16:
            cleaned = f"{stem[:MAX_FILENAME - len(extension) - 1]}.{extension}"
        else:
            cleaned = cleaned[:MAX_FILENAME]
    return cleaned or "upload"
