"""The route class of every authenticated router: who is calling is settled before the body is
read, and a JSON body that holds a string that is not valid Unicode is refused at the edge.

FastAPI reads and parses the body before it resolves dependencies, so an authentication
dependency alone would let anyone make the server parse a megabyte of JSON. And Python's JSON
parser accepts lone surrogates (`"\\ud800"`), strings that cannot be encoded, stored or rendered
back: refused here once, for every route, instead of failing somewhere later with a 500.

A large body (up to `BATCHD_MAX_JSON_BODY_BYTES`, a megabyte by default) is parsed and checked
on a preparation thread, one at a time per owner, and handed to FastAPI parsed: a tenant
sending megabytes of JSON in a loop does not stall every other request on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from batchd.api.auth import authenticate_request
from batchd.api.state import services
from batchd.errors import InvalidRequest, param_path

_BODYLESS = ("GET", "HEAD", "DELETE", "OPTIONS")


class AuthenticatedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        stored = not self.path.startswith("/v1/chat/")

        async def authenticated(request: Request) -> Response:
            await authenticate_request(request)
            refuse_nul_in_url(request)
            await refuse_invalid_unicode(request, nul_ok=not stored)
            return await handler(request)

        return authenticated


def _parsed_as_json(request: Request) -> bool:
    """Whether FastAPI will parse this body as JSON (as its request handler decides)."""
    if request.method in _BODYLESS:
        return False
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def refuse_nul_in_url(request: Request) -> None:
    """A NUL character in a query or path parameter: no id, name or filter holds one, and
    PostgreSQL cannot even compare text with it."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if "\x00" in str(value):
            raise InvalidRequest(f"Invalid value for '{name}': it holds a NUL character.",
                                 code="invalid_value", param=name)


async def refuse_invalid_unicode(request: Request, *, nul_ok: bool = True) -> None:
    """Refuse a JSON body with a string that is not valid Unicode; unless `nul_ok`, also one
    with a NUL character (a body whose strings are stored: PostgreSQL's text cannot hold
    one). Chat messages may hold NULs: they are never stored."""
    if not _parsed_as_json(request):
        return  # multipart uploads are streamed by their route; text fields decode safely
    body = await request.body()  # kept by the request: FastAPI reads the same bytes
    if not body:
        return
    if len(body) < LARGE_BODY_BYTES:
        value = _checked_json(body, nul_ok=nul_ok)
    else:
        value = await services(request).preparation.run(
            lambda: _checked_json(body, nul_ok=nul_ok))
    if value is not _NOT_JSON:
        # Starlette keeps a parsed body here, and FastAPI's handler reads it from there
        # (`Request.json`) rather than parsing the same bytes again on the event loop.
        request._json = value


LARGE_BODY_BYTES = 64 * 1024  # smaller bodies parse in well under a millisecond
_NOT_JSON = object()


def _checked_json(body: bytes, *, nul_ok: bool) -> Any:
    """The parsed body (`_NOT_JSON` when it is not JSON: FastAPI answers with its own 400),
    once no string in it is refused."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON
    loc = invalid_string_at(value)
    if loc is not None:
        param = param_path(loc)
        raise InvalidRequest(
            f"Invalid value for '{param or 'body'}': the string is not valid Unicode (it "
            "holds a lone surrogate escape such as \\ud800).", code="invalid_value",
            param=param)
    loc = None if nul_ok else invalid_string_at(value, allowed=lambda text: "\x00" not in text)
    if loc is not None:
        param = param_path(loc)
        raise InvalidRequest(f"Invalid value for '{param or 'body'}': it holds a NUL "
                             "character (\\u0000).", code="invalid_value", param=param)
    return value


def invalid_string_at(
    value: object, allowed: Callable[[str], bool] | None = None,
) -> tuple[str | int, ...] | None:
    """Where (`("metadata", "k")`, `("messages", 0, "content")`) a string, key or value,
    cannot be encoded as UTF-8; None when every string can. Iterative: the nesting depth is
    the sender's to choose."""
    ok = allowed or _encodable
    stack: list[tuple[object, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, str):
            if not ok(item):
                return loc
        elif isinstance(item, dict):
            for key, child in item.items():
                if not ok(key):
                    return loc
                stack.append((child, (*loc, key)))
        elif isinstance(item, list):
            stack.extend((child, (*loc, i)) for i, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
