"""Bearer-key authentication: every /v1 route depends on `current_principal`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from batchd.api.state import services
from batchd.errors import Unauthenticated


@dataclass(frozen=True)
class Principal:
    owner: str
    role: str


DEFAULT_OWNER = "default"


def _redact(secret: str) -> str:
    return secret[:5] + "*" * 8 + secret[-4:] if len(secret) > 12 else "*" * 8


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthenticated(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    svc = services(request)
    env_key = svc.settings.api_key
    if env_key and hmac.compare_digest(secret.encode(), env_key.encode()):
        return Principal(owner=DEFAULT_OWNER, role="admin")
    key = await svc.keys.authenticate(secret)
    if key is None:
        raise Unauthenticated(f"Incorrect API key provided: {_redact(secret)}.",
                              code="invalid_api_key")
    return Principal(owner=key.owner, role=key.role)


Caller = Annotated[Principal, Depends(current_principal)]
