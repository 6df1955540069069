"""/v1/files: upload, list, retrieve, delete, download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.state import services
from batchd.batches.schemas import FileDeleted, FileList, FileObject
from batchd.errors import InvalidRequest

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject)
async def upload_file(
    request: Request,
    caller: Caller,
    file: UploadFile,
    purpose: Annotated[str, Form()],
    expires_after_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    expires_after_seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> FileObject:
    if expires_after_seconds is not None:
        if expires_after_anchor not in (None, "created_at"):
            raise InvalidRequest("expires_after[anchor] must be 'created_at'.",
                                 code="invalid_value", param="expires_after.anchor")
        if not 3600 <= expires_after_seconds <= 2_592_000:
            raise InvalidRequest("expires_after[seconds] must be between 3600 and 2592000.",
                                 code="invalid_value", param="expires_after.seconds")
    return await services(request).files.upload(
        owner=caller.owner, filename=file.filename or "upload", purpose=purpose,
        source=file.file, declared_size=file.size,
        expires_after_seconds=expires_after_seconds, tier_limit=caller.tier.max_upload_bytes,
    )


@router.get("", response_model=FileList)
async def list_files(
    request: Request,
    caller: Caller,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    data, has_more = await services(request).files.list(
        owner=caller.scope, purpose=purpose, limit=limit, order=order, after=after
    )
    return FileList(data=data, has_more=has_more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(request: Request, caller: Caller, file_id: str) -> FileObject:
    record = await services(request).files.get(owner=caller.scope, file_id=file_id)
    return FileObject.of(record)


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(request: Request, caller: Caller, file_id: str) -> FileDeleted:
    await services(request).files.delete(owner=caller.scope, file_id=file_id)
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content", response_class=StreamingResponse)
async def file_content(request: Request, caller: Caller, file_id: str) -> StreamingResponse:
    record, body = await services(request).files.content(owner=caller.scope, file_id=file_id)
    return StreamingResponse(
        body, media_type="application/octet-stream",
        headers={"content-length": str(record.bytes),
                 "content-disposition": f'attachment; filename="{record.id}.jsonl"'},
    )
