"""Responses that hold something of their caller's (a read reservation, real-time slots)
and give it back once the body has been sent, or the client has gone, however it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send


class _Held(Response):
    _release: Callable[[], None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class HeldResponse(_Held):
    """A body built within a read reservation."""

    def __init__(self, content: bytes, *, release: Callable[[], None], media_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release


class HeldStream(_Held, StreamingResponse):
    """A stream holding its caller's real-time slots."""

    def __init__(self, content: AsyncIterator[bytes], *, release: Callable[[], None],
                 media_type: str, headers: dict[str, str]) -> None:
        StreamingResponse.__init__(self, content, media_type=media_type, headers=headers)
        self._release = release
