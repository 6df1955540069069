"""The web console at /console (static files shipped in the package) and the two small
endpoints it needs beyond OpenAI's: who the key is, and a page of a result file's lines.

The console is a client of /v1 and /admin with the signed-in key: it can see and do exactly
what that key can through the API, nothing more.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel

from batchd import read_budget
from batchd.api.auth import Caller
from batchd.api.held import HeldResponse
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.errors import NotFound
from batchd.limits.tiers import batch_request_limit
from batchd.line_reader import Line, LineReader
from batchd.read_budget import MIB, PIECE_BYTES

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
    requests = batch_request_limit(caller.tier, settings.max_requests_per_batch)
    return Session(
        owner=caller.owner, role=caller.role, tier=caller.tier_name,
        limits=SessionLimits(max_upload_bytes=upload, max_batch_file_bytes=batch_file,
                             max_requests_per_batch=requests),
        models=[SessionModel(id=m.id, aliases=list(m.aliases), engine=m.engine,
                            serves=list(m.serves))
                for m in svc.registry.config.models])


@api.get("/batches/{batch_id}/progress")
async def batch_progress(request: Request, caller: Caller, batch_id: str) -> dict[str, Any]:
    """The batch's finished and failed requests and output tokens over time, as each chunk
    was done (a batchd extension, for the console's chart)."""
    return await services(request).batches.progress(owner=caller.scope, batch_id=batch_id)


class LinePage(BaseModel):
    object: Literal["list"] = "list"
    # Each line's JSON object; a line longer than LINE_BYTES is
    # {"custom_id": …, "truncated": true, "bytes": its length} instead.
    data: list[dict[str, Any]]
    has_more: bool
    next_cursor: int | None  # pass as `cursor` for the next page


# One request reads at most this much of a file: a search for a rare custom_id in a huge file
# answers in pieces (has_more with a cursor) instead of holding a thread for the whole scan.
_SCAN_BYTES = 64 * MIB
# What one request holds: lines longer than LINE_BYTES are not returned whole (nor held), and
# a page ends once its lines hold PAGE_BYTES. Its reservation from the process-wide budget
# covers the page and the response's copy of it, the piece being read, one line's head (and
# its copy), and that line parsed (a list of numbers takes up to ~8 times its text).
LINE_BYTES = MIB
PAGE_BYTES = 4 * MIB
_RESERVED = 2 * (PAGE_BYTES + LINE_BYTES) + PIECE_BYTES + 2 * LINE_BYTES + 8 * LINE_BYTES
# Where a line's custom_id is, when the line is too long to parse (its head only is held).
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')


@api.get("/files/{file_id}/lines", response_model=LinePage)
async def file_lines(
    request: Request, caller: Caller, file_id: str,
    cursor: int = Query(default=0, ge=0, description="Where to resume: a previous page's "
                                                    "next_cursor (0: the start)."),
    limit: int = Query(default=50, ge=1, le=500),
    custom_id: str | None = Query(default=None, max_length=512,
                                  description="Only lines with this custom_id."),
) -> Response:
    """A page of a JSONL file's lines as objects (a batch's output or error file), or the
    lines of one `custom_id` (a batchd extension, used by the console's results view). A line
    over 1 MiB comes as `{"custom_id", "truncated": true, "bytes"}`; a page ends early once
    it holds 4 MiB."""
    svc = services(request)
    record = await svc.files.get(owner=caller.scope, file_id=file_id)
    if record.purpose not in ("batch_output", "batch"):
        raise NotFound(f"File {file_id} is not a JSONL file of requests or results.",
                       param="file_id")
    if cursor >= record.bytes:
        return Response(_page([], has_more=False, next_cursor=None),
                        media_type="application/json")
    held = await read_budget.READS.reserve(_RESERVED, owner=caller.owner)

    def scan() -> bytes:
        items: list[bytes] = []
        size = 0
        needle = None if custom_id is None else orjson.dumps(custom_id)
        position = cursor
        reader = LineReader(svc.files.read_from(record, cursor), cap=LINE_BYTES, start=cursor)
        for line in reader:
            if len(items) == limit or position - cursor > _SCAN_BYTES or size >= PAGE_BYTES:
                return _page(items, has_more=True, next_cursor=position)
            position += line.size
            if needle is not None and needle not in line.head:
                continue
            item = _item(line, custom_id)
            if item is not None:
                items.append(item)
                size += len(item)
        return _page(items, has_more=False, next_cursor=None)

    try:
        body = await asyncio.to_thread(scan)
    except BaseException:
        held.release()
        raise
    return HeldResponse(body, release=held.release, media_type="application/json")


def _page(items: list[bytes], *, has_more: bool, next_cursor: int | None) -> bytes:
    """The LinePage as JSON, each line's own bytes spliced in: a page is held once, not also
    as parsed objects and their re-encoding."""
    tail = orjson.dumps({"has_more": has_more, "next_cursor": next_cursor})
    return b'{"object":"list","data":[' + b",".join(items) + b"]," + tail[1:]


def _item(line: Line, custom_id: str | None) -> bytes | None:
    """The line as an item of `data` (None: filtered out by `custom_id`)."""
    if line.truncated:
        found = _CUSTOM_ID.search(line.head)
        try:
            named = orjson.loads(found.group(1)) if found else None
        except orjson.JSONDecodeError:  # not a string JSON can hold (a lone surrogate)
            named = None
        if custom_id is not None and named != custom_id:
            return None
        return orjson.dumps({"custom_id": named, "truncated": True, "bytes": line.size})
    try:
        value = orjson.loads(line.head)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        if custom_id is not None and value.get("custom_id") != custom_id:
            return None
        return line.head.strip()  # valid JSON as it is
    if custom_id is not None:
        return None
    return orjson.dumps({"unparsed": line.head.decode("utf-8", "replace").rstrip("\n")})


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
