"""/v1/uploads: files above the single-request limit, sent in parts (OpenAI's Uploads API)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.uploads import CompleteUpload, CreateUpload, PartObject, UploadObject

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], route_class=AuthenticatedRoute)

_PART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "format": "binary"}}}}}}}


@router.post("", response_model=UploadObject)
async def create_upload(request: Request, caller: Caller, body: CreateUpload) -> UploadObject:
    """Start an upload of `bytes` bytes; it expires an hour from now."""
    return await services(request).uploads.create(
        owner=caller.owner, body=body, tier_limit=caller.tier.max_upload_bytes)


@router.post("/{upload_id}/parts", response_model=PartObject, openapi_extra=_PART_BODY)
async def add_part(request: Request, caller: Caller, upload_id: str) -> PartObject:
    """Add a part (multipart field `data`, up to 64 MB), stored as it arrives. The parts may
    not hold more than the upload's `bytes` together."""
    return await services(request).uploads.add_part(
        owner=caller.scope, upload_id=upload_id,
        content_type=request.headers.get("content-type"), body=request.stream(),
        tier_limit=caller.tier.max_upload_bytes)


@router.post("/{upload_id}/complete", response_model=UploadObject)
async def complete_upload(request: Request, caller: Caller, upload_id: str,
                          body: CompleteUpload) -> UploadObject:
    """Join the parts, in the order of `part_ids`, into a File (checked against `md5`)."""
    return await services(request).uploads.complete(owner=caller.scope, upload_id=upload_id,
                                                    body=body)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
async def cancel_upload(request: Request, caller: Caller, upload_id: str) -> UploadObject:
    """Give up the upload; its parts are removed."""
    return await services(request).uploads.cancel(owner=caller.scope, upload_id=upload_id)
