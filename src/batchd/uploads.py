"""The Uploads API: a file too big for one request, sent in parts and joined on completion.

Each part is streamed into its own blob as it arrives; completing joins the parts in the
order given, streaming them into the file's blob (checking the total size and, if given, the
MD5 on the way), so memory stays flat for a multi-GB upload. An upload expires an hour after
it was created; its parts are then removed, as they are on cancel and after completion.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from batchd import ids
from batchd.batches.schemas import FileObject
from batchd.clock import Clock
from batchd.errors import Conflict, InvalidRequest, NotFound
from batchd.files import BATCH_FILE_EXPIRY, UPLOAD_PURPOSES, FileService, blob_key
from batchd.settings import Settings
from batchd.store.blobs import BlobStore
from batchd.store.metadata import MetadataStore
from batchd.store.records import FileRecord, UploadPart, UploadRecord
from batchd.upload_stream import StreamedUpload

PART_LIMIT = 64 * 1024 * 1024  # OpenAI's largest part
UPLOAD_LIFETIME = 3600


class CreateUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int = Field(ge=0)
    filename: str = Field(min_length=1, max_length=1024)
    mime_type: str = Field(min_length=1, max_length=200)
    purpose: str


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_ids: list[str] = Field(min_length=1, max_length=10_000)
    md5: str | None = Field(default=None, max_length=64)


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class PartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class _Md5Mismatch(Exception):
    pass


class UploadService:
    def __init__(self, *, store: MetadataStore, blobs: BlobStore, clock: Clock,
                 settings: Settings, files: FileService) -> None:
        self.store, self.blobs, self.clock = store, blobs, clock
        self.settings, self.files = settings, files

    def _limit(self, purpose: str, tier_limit: int | None) -> int:
        """The most bytes an upload may total: the Uploads limit, the tier's, and for batch
        input the Batch API's."""
        limit = self.settings.max_upload_total_bytes
        if tier_limit is not None:
            limit = min(limit, tier_limit)
        if purpose == "batch":
            limit = min(limit, self.settings.max_batch_file_bytes)
        return limit

    async def _object(self, upload: UploadRecord) -> UploadObject:
        file = None
        if upload.file_id:
            record = await self.store.get_file(upload.file_id, owner=None)
            file = FileObject.of(record) if record else None
        status = upload.status
        if status == "pending" and upload.expires_at <= int(self.clock.now()):
            status = "expired"
        return UploadObject(id=upload.id, bytes=upload.bytes, created_at=upload.created_at,
                            expires_at=upload.expires_at, filename=upload.filename,
                            purpose=upload.purpose, status=status,
                            file=file)

    async def create(self, *, owner: str, body: CreateUpload,
                     tier_limit: int | None) -> UploadObject:
        if body.purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"Invalid value: '{body.purpose}'. Supported values are: "
                                 f"{', '.join(repr(p) for p in UPLOAD_PURPOSES)}.",
                                 code="invalid_value", param="purpose")
        if body.purpose == "batch" and not body.filename.lower().endswith(".jsonl"):
            raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl",
                                 code="invalid_file_format", param="filename")
        limit = self._limit(body.purpose, tier_limit)
        if body.bytes > limit:
            raise InvalidRequest(f"Upload is too large: {body.bytes} bytes; the maximum for "
                                 f"purpose '{body.purpose}' is {limit} bytes.",
                                 code="file_too_large", param="bytes")
        now = int(self.clock.now())
        upload = UploadRecord(id=ids.upload_id(), owner=owner, filename=body.filename,
                              purpose=body.purpose, mime_type=body.mime_type, bytes=body.bytes,
                              status="pending", created_at=now,
                              expires_at=now + UPLOAD_LIFETIME)
        await self.store.insert_upload(upload)
        return await self._object(upload)

    async def _pending(self, owner: str | None, upload_id: str) -> UploadRecord:
        upload = await self.store.get_upload(upload_id, owner=owner)
        if upload is None:
            raise NotFound(f"No upload found with id '{upload_id}'.", param="upload_id")
        status = (await self._object(upload)).status
        if status != "pending":
            raise InvalidRequest(f"Upload {upload_id} is {status}: it takes no more parts "
                                 "and cannot be completed.", code="invalid_upload_state",
                                 param="upload_id")
        return upload

    async def add_part(self, *, owner: str | None, upload_id: str, content_type: str | None,
                       body: AsyncIterator[bytes]) -> PartObject:
        upload = await self._pending(owner, upload_id)
        part_id = ids.upload_part_id()
        key = f"uploads/{upload.id}/{part_id}"
        form = await StreamedUpload(
            open_writer=lambda: self.blobs.writer(key), limit_for=lambda _: PART_LIMIT,
            too_large=lambda limit: InvalidRequest(
                f"Part is too large: the maximum is {limit // (1024 * 1024)} MB.",
                code="file_too_large", param="data"),
            known_fields=(), file_field="data",
        ).receive(content_type, body)
        part = UploadPart(id=part_id, upload_id=upload.id, created_at=int(self.clock.now()),
                          bytes=form.size, blob_key=key)
        if not await self.store.add_part(part):
            await asyncio.to_thread(self.blobs.delete, key)
            await self._pending(owner, upload_id)  # says why
            raise Conflict(f"Upload {upload_id} is no longer pending.")
        return PartObject(id=part.id, created_at=part.created_at, upload_id=upload.id)

    async def complete(self, *, owner: str | None, upload_id: str,
                       body: CompleteUpload) -> UploadObject:
        upload = await self._pending(owner, upload_id)
        parts = {p.id: p for p in await self.store.list_parts(upload.id)}
        if len(set(body.part_ids)) != len(body.part_ids):
            raise InvalidRequest("'part_ids' names a part more than once.",
                                 code="invalid_value", param="part_ids")
        for n, part_id in enumerate(body.part_ids):
            if part_id not in parts:
                raise InvalidRequest(f"Part {part_id} is not a part of upload {upload.id}.",
                                     code="invalid_value", param=f"part_ids[{n}]")
        chosen = [parts[p] for p in body.part_ids]
        total = sum(p.bytes for p in chosen)
        if total != upload.bytes:
            raise InvalidRequest(f"The parts hold {total} bytes; the upload was created for "
                                 f"{upload.bytes}.", code="invalid_value", param="part_ids")
        file_id = ids.file_id()
        key = blob_key(file_id)
        try:
            await asyncio.to_thread(self._join, chosen, key, body.md5)
        except _Md5Mismatch as exc:
            raise InvalidRequest(f"The md5 checksum does not match the parts in this order "
                                 f"(they hash to {exc}).", code="invalid_value",
                                 param="md5") from exc
        now = int(self.clock.now())
        record = FileRecord(
            id=file_id, owner=upload.owner, purpose=upload.purpose, filename=upload.filename,
            bytes=total, created_at=now,
            expires_at=now + BATCH_FILE_EXPIRY if upload.purpose == "batch" else None,
            status="processed", blob_key=key)
        if not await self.store.complete_upload(upload.id, record):
            await asyncio.to_thread(self.blobs.delete, key)
            await self._pending(owner, upload_id)  # says why
            raise Conflict(f"Upload {upload_id} is no longer pending.")
        await self._drop_parts(upload.id)
        completed = await self.store.get_upload(upload.id, owner=None)
        assert completed is not None
        return await self._object(completed)

    def _join(self, parts: list[UploadPart], key: str, md5: str | None) -> None:
        """Stream the parts, in order, into one new blob (never whole in memory)."""
        digest = hashlib.md5(usedforsecurity=False)
        with self.blobs.writer(key) as out:
            for part in parts:
                for piece in self.blobs.read_range(part.blob_key):
                    digest.update(piece)
                    out.write(piece)
            if md5 is not None and digest.hexdigest() != md5.strip().lower():
                raise _Md5Mismatch(digest.hexdigest())  # the writer discards the blob

    async def cancel(self, *, owner: str | None, upload_id: str) -> UploadObject:
        upload = await self._pending(owner, upload_id)
        await self.store.end_uploads([upload.id], status="cancelled")
        await self._drop_parts(upload.id)
        ended = await self.store.get_upload(upload.id, owner=None)
        assert ended is not None
        return await self._object(ended)

    async def get(self, *, owner: str | None, upload_id: str) -> UploadObject:
        upload = await self.store.get_upload(upload_id, owner=owner)
        if upload is None:
            raise NotFound(f"No upload found with id '{upload_id}'.", param="upload_id")
        return await self._object(upload)

    async def expire(self) -> int:
        """Uploads an hour old and not completed: expired, their parts removed."""
        overdue = await self.store.overdue_uploads(now=int(self.clock.now()))
        ended = await self.store.end_uploads(overdue, status="expired")
        for upload_id in ended:
            await self._drop_parts(upload_id)
        return len(ended)

    async def _drop_parts(self, upload_id: str) -> None:
        await asyncio.to_thread(self.blobs.delete_prefix, f"uploads/{upload_id}/")
        await self.store.forget_parts(upload_id)
