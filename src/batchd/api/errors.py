"""Every error leaves as OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchd.errors import BatchdError

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, *, error_type: str = "invalid_request_error",
    code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status_code=status, headers=headers,
    )


async def _batchd_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BatchdError)
    if exc.status_code >= 500:
        log.error("request failed: %s", exc.message)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


def _loc_to_param(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _loc_to_param(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    if kind == "missing":
        return error_response(400, f"Missing required parameter: '{param}'.",
                              code="missing_required_parameter", param=param)
    if kind == "json_invalid":
        return error_response(400, "We could not parse the JSON body of your request. "
                              "(HINT: This likely means you aren't using your HTTP library "
                              "correctly.)", code="invalid_json", param=None)
    message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
    code = "invalid_type" if kind.endswith("_type") or "parsing" in kind else "invalid_value"
    return error_response(400, message, code=code, param=param)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(404, "Unknown request URL. Please check the URL and method.",
                              code="unknown_url")
    if exc.status_code == 405:
        return error_response(405, "Method not allowed for this URL.", code="method_not_allowed",
                              headers=dict(exc.headers or {}))
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "The server had an error while processing your request.",
                          error_type="server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BatchdError, _batchd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
