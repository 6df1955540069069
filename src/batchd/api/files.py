"""/v1/files: upload, list, retrieve, delete, download."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.files import UPLOAD_PURPOSES, file_object
from batchd.openai.files import FileDeleted, FileList, FileObject

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=AuthenticatedRoute)


# The body is parsed by hand (see batchd.upload_stream), so its schema is declared here.
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
    },
}}}}}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, caller: Caller) -> FileObject:
    return await services(request).files.upload(
        owner=caller.owner, content_type=request.headers.get("content-type"),
        body=request.stream(), tier_limit=caller.tier.max_upload_bytes,
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
    return file_object(record)


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
