"""A response whose body was built within a read reservation: the reservation is given back
once the body has been sent, or the client has gone."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi.responses import Response
from starlette.types import Receive, Scope, Send


class HeldResponse(Response):
    def __init__(self, content: bytes, *, release: Callable[[], None], media_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
