"""The web console at /console (static files shipped in the package) and the two small
endpoints it needs beyond OpenAI's: who the key is, and a page of a result file's lines.

The console is a client of /v1 and /admin with the signed-in key: it can see and do exactly
what that key can through the API, nothing more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel

from batchd.api.auth import Caller
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.errors import NotFound

ASSETS = Path(__file__).resolve().parents[1] / "console"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Only what the server itself serves; no inline script or style; no framing.
CONSOLE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' "
                  "data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
                  "base-uri 'none'")

api = APIRouter(prefix="/admin", tags=["console"], route_class=AuthenticatedRoute)
pages = APIRouter(include_in_schema=False)


class SessionLimits(BaseModel):
    max_upload_bytes: int
    max_batch_file_bytes: int
    max_requests_per_batch: int


class SessionModel(BaseModel):
    id: str
    aliases: list[str]
    engine: str
    serves: list[str]  # chat, embeddings


class Session(BaseModel):
    object: Literal["session"] = "session"
    owner: str
    role: str
    tier: str
    limits: SessionLimits
    models: list[SessionModel]


@api.get("/session", response_model=Session)
async def session(request: Request, caller: Caller) -> Session:
    """Who this key is (owner, role, tier), its upload and batch limits, and the served
    models. Any key may ask about itself (a batchd extension, used by the console)."""
    svc = services(request)
    settings = svc.settings
    upload = svc.files.upload_limit(None, caller.tier.max_upload_bytes)
    batch_file = svc.files.upload_limit("batch", caller.tier.max_upload_bytes)
    requests = min(settings.max_requests_per_batch,
                   caller.tier.max_batch_requests or settings.max_requests_per_batch)
    return Session(
        owner=caller.owner, role=caller.role, tier=caller.tier_name,
        limits=SessionLimits(max_upload_bytes=upload, max_batch_file_bytes=batch_file,
                             max_requests_per_batch=requests),
        models=[SessionModel(id=m.id, aliases=list(m.aliases), engine=m.engine,
                            serves=list(m.serves))
                for m in svc.registry.config.models])


class LinePage(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: int | None  # pass as `cursor` for the next page


# One request reads at most this much of a file: a search for a rare custom_id in a huge file
# answers in pieces (has_more with a cursor) instead of holding a thread for the whole scan.
_SCAN_BYTES = 64 * 1024 * 1024


@api.get("/files/{file_id}/lines", response_model=LinePage)
async def file_lines(
    request: Request, caller: Caller, file_id: str,
    cursor: int = Query(default=0, ge=0, description="Where to resume: a previous page's "
                                                    "next_cursor (0: the start)."),
    limit: int = Query(default=50, ge=1, le=500),
    custom_id: str | None = Query(default=None, max_length=512,
                                  description="Only lines with this custom_id."),
) -> LinePage:
    """A page of a JSONL file's lines as objects (a batch's output or error file), or the
    lines of one `custom_id` (a batchd extension, used by the console's results view)."""
    svc = services(request)
    record = await svc.files.get(owner=caller.scope, file_id=file_id)
    if record.purpose not in ("batch_output", "batch"):
        raise NotFound(f"File {file_id} is not a JSONL file of requests or results.",
                       param="file_id")
    if cursor >= record.bytes:
        return LinePage(data=[], has_more=False, next_cursor=None)

    def scan() -> LinePage:
        found: list[dict[str, Any]] = []
        needle = None if custom_id is None else orjson.dumps(custom_id)
        position = cursor
        for raw in svc.blobs.lines(record.blob_key, cursor):
            if len(found) == limit or position - cursor > _SCAN_BYTES:
                return LinePage(data=found, has_more=True, next_cursor=position)
            position += len(raw)
            if needle is not None and needle not in raw:
                continue
            value = _parsed(raw)
            if custom_id is not None and value.get("custom_id") != custom_id:
                continue
            found.append(value)
        return LinePage(data=found, has_more=False, next_cursor=None)

    return await asyncio.to_thread(scan)


def _parsed(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    return {"unparsed": raw.decode("utf-8", "replace").rstrip("\n")}


@pages.get("/console")
async def console_page() -> Response:
    return _asset("index.html")


@pages.get("/console/")
async def console_slash() -> Response:
    return RedirectResponse("/console")


@pages.get("/console/assets/{name}")
async def console_asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    path = (ASSETS / name).resolve()
    if path.parent != ASSETS or not path.is_file() or path.suffix not in _TYPES:
        raise NotFound(f"No console asset named {name!r}.")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={
        "content-security-policy": CONSOLE_POLICY, "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer", "cache-control": "no-cache"})
