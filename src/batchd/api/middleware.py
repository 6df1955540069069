"""Pure ASGI middleware: request body limits and timeouts, and rate-limit headers on every
response."""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.api.errors import error_response


class BodyRefused(HTTPException):
    """A body refused while it arrives, with OpenAI's error code for it. The rest of the body
    is never read, so the connection closes with the answer."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None) -> None:
        super().__init__(status, detail=message, headers={"connection": "close"})
        self.code = code
        self.param = param


class BodyLimit:
    """Refuse oversized bodies before any work: JSON bodies over `max_json_bytes` (413), and
    uploads whose declared length is over `max_upload_bytes` (400, as OpenAI answers). Bodies
    without a declared length are counted as they arrive."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_json = max_json_bytes
        # Multipart framing adds a little around the file itself.
        self.max_upload = max_upload_bytes + 64 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        upload = headers.get("content-type", "").startswith("multipart/")
        limit = self.max_upload if upload else self.max_json
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(upload, limit, scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body parsing untouched and
                    # reaches the error envelope handler.
                    status, message_text, code = _refusal(upload, limit)
                    raise BodyRefused(status, message_text, code=code,
                                      param="file" if upload else None)
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _refuse(upload: bool, limit: int, scope: Scope, receive: Receive,
                      send: Send) -> None:
        status, message, code = _refusal(upload, limit)
        response = error_response(status, message, code=code,
                                  param="file" if upload else None)
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _refusal(upload: bool, limit: int) -> tuple[int, str, str]:
    if upload:
        return (400, f"File is too large. The maximum size is {limit / (1024 * 1024):.0f} MB.",
                "file_too_large")
    return 413, f"The request body is larger than the limit of {limit:,} bytes.", \
        "request_too_large"


class BodyTimeout:
    """A request body must keep coming: a wait of more than `seconds` for its next piece ends
    the request with a 408 (a client that sends half a body and stops would otherwise hold a
    connection and, for an upload, a blob writer forever). Once the body is complete the app
    may wait on `receive` as long as it likes (that is how it learns of a disconnect)."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(408, f"The request body did not arrive within "
                                  f"{self.seconds:g} seconds of its last piece.",
                                  code="request_timeout", param=None) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


class RateLimitHeaders:
    """Copies the caller's rate-limit state (set by authentication) onto the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get("rate_limit_headers")
                if extra:
                    headers = MutableHeaders(scope=message)
                    for name, value in extra.items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class DocsContentPolicy:
    """The documentation pages may load only what the server itself serves: the ReDoc bundle
    hard-codes an image on redoc's CDN, which a machine without internet could never fetch
    (and a machine with it should not be told about)."""

    POLICY = ("default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
              "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'")

    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["content-security-policy"] = self.POLICY
            await send(message)

        await self.app(scope, receive, send_with_policy)
