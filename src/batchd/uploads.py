"""The Uploads API: a file too big for one request, sent in parts and joined on completion.

Each part is streamed into its own blob as it arrives; completing joins the parts in the
order given, streaming them into the file's blob (checking the total size and, if given, the
MD5 on the way), so memory stays flat for a multi-GB upload. An upload expires an hour after
it was created; its parts are then removed, as they are on cancel and after completion.

What one owner can make the server hold is bounded: parts may not total more than the
upload's declared `bytes` (which the key's size limit bounds), an upload has at most
`max_upload_parts` parts, and an owner at most `max_pending_uploads` unfinished uploads.
Completion first claims the upload in the store (`completing`), so a cancel, an expiry or a
new part arriving meanwhile is refused instead of deleting the parts being read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from batchd import ids
from batchd.clock import Clock
from batchd.errors import InvalidRequest, NotFound, TooManyRequests
from batchd.files import (
    BATCH_FILE_EXPIRY,
    UPLOAD_PURPOSES,
    FileService,
    blob_key,
    display_name,
    file_object,
)
from batchd.limits.errors import PartLimit, PendingUploadLimit
from batchd.openai.files import FileObject
from batchd.settings import Settings
from batchd.shielding import finish_even_if_cancelled
from batchd.store.blobs import BlobStore
from batchd.store.records import FileRecord, UploadPart, UploadRecord
from batchd.store.roles import UploadVerbs
from batchd.upload_stream import StreamedUpload

log = logging.getLogger(__name__)

PART_LIMIT = 64 * 1024 * 1024  # OpenAI's largest part
MAX_PARTS = 10_000  # the most `part_ids` a completion names; max_upload_parts stays below
UPLOAD_LIFETIME = 3600
# A completion still claimed this long after its upload expired lost its process (a crash):
# the upload is expired and its parts removed. No join of 8 GB takes an hour.
ABANDONED_AFTER = 3600


UploadStatus = Literal["pending", "completed", "cancelled", "expired"]
_STATUSES: dict[str, UploadStatus] = {
    "pending": "pending", "completing": "pending", "completed": "completed",
    "cancelled": "cancelled", "expired": "expired"}


class CreateUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int = Field(ge=0)
    filename: str = Field(min_length=1, max_length=1024)
    mime_type: str = Field(min_length=1, max_length=200)
    purpose: str


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_ids: list[str] = Field(min_length=1, max_length=MAX_PARTS)
    md5: str | None = Field(default=None, max_length=64)


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FileObject | None = None


class PartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class _Md5Mismatch(Exception):
    pass


class UploadService:
    def __init__(self, *, store: UploadVerbs, blobs: BlobStore, clock: Clock,
                 settings: Settings, files: FileService) -> None:
        self.store, self.blobs, self.clock = store, blobs, clock
        self.settings, self.files = settings, files

    def _limit(self, purpose: str, tier_limit: int | None) -> int:
        """The most bytes an upload may total: the Uploads limit, the tier's, and for batch
        input the Batch API's."""
        return self.files.upload_limit(purpose, tier_limit,
                                       server_limit=self.settings.max_upload_total_bytes)

    async def _object(self, upload: UploadRecord) -> UploadObject:
        file = None
        if upload.file_id:
            record = await self.store.get_file(upload.file_id, owner=None)
            file = file_object(record) if record else None
        return UploadObject(id=upload.id, bytes=upload.bytes, created_at=upload.created_at,
                            expires_at=upload.expires_at, filename=upload.filename,
                            purpose=upload.purpose, status=self._status(upload),
                            file=file)

    def _status(self, upload: UploadRecord) -> UploadStatus:
        """OpenAI's status: an upload being completed is still `pending` to its client, and
        one past its hour is `expired` before the sweep records it."""
        if upload.status == "pending" and upload.expires_at <= int(self.clock.now()):
            return "expired"
        return _STATUSES[upload.status]

    async def create(self, *, owner: str, body: CreateUpload,
                     tier_limit: int | None) -> UploadObject:
        if body.purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"Invalid value: '{body.purpose}'. Supported values are: "
                                 f"{', '.join(repr(p) for p in UPLOAD_PURPOSES)}.",
                                 code="invalid_value", param="purpose")
        # The same name as `POST /v1/files` would keep: it reaches other people's screens.
        filename = display_name(body.filename)
        if body.purpose == "batch" and not filename.lower().endswith(".jsonl"):
            raise InvalidRequest("Invalid file format for Batch API. Must be .jsonl",
                                 code="invalid_file_format", param="filename")
        limit = self._limit(body.purpose, tier_limit)
        if body.bytes > limit:
            raise InvalidRequest(f"Upload is too large: {body.bytes} bytes; the maximum for "
                                 f"purpose '{body.purpose}' is {limit} bytes.",
                                 code="file_too_large", param="bytes")
        now = int(self.clock.now())
        upload = UploadRecord(id=ids.upload_id(), owner=owner, filename=filename,
                              purpose=body.purpose, mime_type=body.mime_type, bytes=body.bytes,
                              status="pending", created_at=now,
                              expires_at=now + UPLOAD_LIFETIME)
        try:
            await self.store.insert_upload(upload,
                                           max_pending=self.settings.max_pending_uploads)
        except PendingUploadLimit as over:
            raise TooManyRequests(
                f"You have {over.pending} unfinished uploads, the most one owner may have at "
                f"once ({over.limit}); complete or cancel one first (or let it expire).",
                code="too_many_pending_uploads",
                headers={"x-should-retry": "false"}) from over
        return await self._object(upload)

    async def _pending(self, owner: str | None, upload_id: str) -> UploadRecord:
        upload = await self.store.get_upload(upload_id, owner=owner)
        if upload is None:
            raise NotFound(f"No upload found with id '{upload_id}'.", param="upload_id")
        if upload.status != "pending" or self._status(upload) != "pending":
            raise self._not_pending(upload)
        return upload

    def _not_pending(self, upload: UploadRecord) -> InvalidRequest:
        state = ("being completed" if upload.status == "completing"
                 else self._status(upload))
        return InvalidRequest(f"Upload {upload.id} is {state}: it takes no more parts and "
                              "cannot be completed or cancelled.",
                              code="invalid_upload_state", param="upload_id")

    async def _lost_race(self, owner: str | None, upload_id: str) -> InvalidRequest:
        """The 400 for a request that found the upload pending but lost it to another (a
        completion, a cancel, the expiry) before its own change."""
        upload = await self.store.get_upload(upload_id, owner=owner)
        if upload is None:  # not possible (uploads are never deleted), but say something true
            return InvalidRequest(f"Upload {upload_id} is no longer pending.",
                                  code="invalid_upload_state", param="upload_id")
        return self._not_pending(upload)

    def _byte_cap(self, upload: UploadRecord, tier_limit: int | None) -> tuple[int, str]:
        """The most bytes the upload's parts may hold together, and why."""
        key_limit = self._limit(upload.purpose, tier_limit)
        if key_limit < upload.bytes:  # the key's tier was lowered after the upload began
            return key_limit, (f"the largest upload this key may make for purpose "
                               f"'{upload.purpose}' is {key_limit} bytes")
        return upload.bytes, f"upload {upload.id} was created for {upload.bytes} bytes"

    async def add_part(self, *, owner: str | None, upload_id: str, content_type: str | None,
                       body: AsyncIterator[bytes], tier_limit: int | None = None) -> PartObject:
        upload = await self._pending(owner, upload_id)
        max_parts = self.settings.max_upload_parts
        count, held = await self.store.part_totals(upload.id)
        if count >= max_parts:
            raise _too_many_parts(upload.id, max_parts)
        cap, why = self._byte_cap(upload, tier_limit)
        room = max(cap - held, 0)

        def too_large(limit: int) -> InvalidRequest:
            if limit == PART_LIMIT:
                return InvalidRequest(f"Part is too large: the maximum is "
                                      f"{limit // (1024 * 1024)} MB.",
                                      code="file_too_large", param="data")
            return _past_cap(why, held, room)

        part_id = ids.upload_part_id()
        key = f"uploads/{upload.id}/{part_id}"
        # Reading stops (and nothing is kept) the moment the part passes what the upload
        # has room for: a part never stores more than the upload may hold.
        form = await StreamedUpload(
            open_writer=lambda: self.blobs.writer(key), limit_for=lambda _: min(PART_LIMIT, room),
            too_large=too_large, known_fields=(), file_field="data",
        ).receive(content_type, body)
        part = UploadPart(id=part_id, upload_id=upload.id, created_at=int(self.clock.now()),
                          bytes=form.size, blob_key=key)
        try:
            # Checked again where parts are recorded: parts sent side by side each fit the
            # room seen when they began, not necessarily together.
            added = await self.store.add_part(part, max_parts=max_parts, max_bytes=cap)
        except PartLimit as over:
            await asyncio.to_thread(self.blobs.delete, key)
            if over.what == "parts":
                raise _too_many_parts(upload.id, max_parts) from over
            raise _past_cap(why, over.held, max(cap - over.held, 0)) from over
        # (Any other failure keeps the blob: after an outage the part may have been recorded
        # with the answer lost; an unrecorded one goes with the upload's prefix at its end.)
        if not added:
            await asyncio.to_thread(self.blobs.delete, key)
            raise await self._lost_race(owner, upload_id)
        return PartObject(id=part.id, created_at=part.created_at, upload_id=upload.id)

    async def complete(self, *, owner: str | None, upload_id: str,
                       body: CompleteUpload) -> UploadObject:
        upload = await self._pending(owner, upload_id)
        if len(set(body.part_ids)) != len(body.part_ids):
            raise InvalidRequest("'part_ids' names a part more than once.",
                                 code="invalid_value", param="part_ids")
        # The claim orders this completion against a cancel, the expiry and new parts: from
        # here the parts stay as they are until the upload is completed or given back.
        if not await self.store.claim_upload(upload.id, now=int(self.clock.now())):
            raise await self._lost_race(owner, upload_id)
        try:
            return await self._complete_claimed(upload, body)
        except BaseException:
            # A failed completion (a wrong md5, a missing part, a dropped connection) leaves
            # the upload pending, to be completed again or cancelled; after a success this
            # changes nothing.
            try:
                await finish_even_if_cancelled(self.store.release_upload(upload.id))
            except Exception:  # the first error is the one to report; expiry sweeps it
                log.warning("could not give back upload %s after a failed completion",
                            upload.id, exc_info=True)
            raise

    async def _complete_claimed(self, upload: UploadRecord,
                                body: CompleteUpload) -> UploadObject:
        parts = {p.id: p for p in await self.store.list_parts(upload.id)}
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
            # The claim was taken away as abandoned (the join outlived ABANDONED_AFTER).
            await asyncio.to_thread(self.blobs.delete, key)
            raise await self._lost_race(None, upload.id)
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
        # Only a pending upload moves: one being completed keeps its parts (the 400 says so).
        if not await self.store.end_uploads([upload.id], status="cancelled"):
            raise await self._lost_race(owner, upload_id)
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
        """Uploads an hour old and not completed: expired, their parts removed (and so are
        completions whose process died mid-way, once they are long overdue)."""
        now = int(self.clock.now())
        ended = await self.store.expire_uploads(now=now, abandoned_before=now - ABANDONED_AFTER)
        for upload_id in ended:
            await self._drop_parts(upload_id)
        return len(ended)

    async def _drop_parts(self, upload_id: str) -> None:
        await asyncio.to_thread(self.blobs.delete_prefix, f"uploads/{upload_id}/")
        await self.store.forget_parts(upload_id)


def _too_many_parts(upload_id: str, limit: int) -> InvalidRequest:
    return InvalidRequest(f"Upload {upload_id} already has {limit} parts, the most one upload "
                          "may have; send larger parts.", code="too_many_parts",
                          param="upload_id")


def _past_cap(why: str, held: int, room: int) -> InvalidRequest:
    return InvalidRequest(f"Part is too large: {why}, and its parts already hold {held} bytes, "
                          f"so a part may add at most {room} bytes.",
                          code="file_too_large", param="data")
