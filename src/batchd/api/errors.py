"""Every error leaves as OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from batchd.backends import outage
from batchd.errors import BatchdError, ServiceUnavailable, error_envelope, invalid_request_of

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, *, error_type: str = "invalid_request_error",
    code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_envelope(message, error_type=error_type, param=param, code=code),
                        status_code=status, headers=headers)


async def _batchd_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BatchdError)
    if exc.status_code >= 500:
        log.error("request failed: %s", exc.message)
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    # FastAPI puts where the value came from first: the body, the query, the path...
    error = invalid_request_of(first, loc[1:] if loc and loc[0] in _SOURCES else loc)
    return JSONResponse(error.envelope(), status_code=error.status_code)


_SOURCES = ("body", "query", "path", "header", "form")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(404, "Unknown request URL. Please check the URL and method.",
                              code="unknown_url")
    if exc.status_code == 405:
        return error_response(405, "Method not allowed for this URL.", code="method_not_allowed",
                              headers=dict(exc.headers or {}))
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}),
                          code=getattr(exc, "code", None), param=getattr(exc, "param", None))


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client went away mid-request: one line, no traceback; nobody reads the answer."""
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(400, "The client disconnected before the request was complete.",
                          code="client_disconnected")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    reason = outage(exc)
    if reason is not None:  # the database or object store, for now: retry later
        log.warning("answered 503: %s", reason)
        error = ServiceUnavailable(f"The service is temporarily unavailable ({reason}); "
                                   "please retry shortly.")
        return JSONResponse(error.envelope(), status_code=error.status_code,
                            headers=error.headers)
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "The server had an error while processing your request.",
                          error_type="server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BatchdError, _batchd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # A backend outage surfaces as one of these; handled here (not by the catch-all, which
    # Starlette re-raises after answering), so it is a clean 503 with no traceback.
    for outage_type in (DBAPIError, OSError, *_asyncpg_errors()):
        app.add_exception_handler(outage_type, _unexpected)
    app.add_exception_handler(Exception, _unexpected)


def _asyncpg_errors() -> tuple[type[Exception], ...]:
    try:
        import asyncpg
    except ImportError:
        return ()
    return (asyncpg.PostgresError, asyncpg.InterfaceError)
