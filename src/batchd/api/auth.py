"""Bearer-key authentication and per-key rate limits: every /v1 route depends on `caller`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from batchd.api.state import services
from batchd.errors import PermissionDenied, RateLimited, Unauthenticated
from batchd.keys import OPERATOR_OWNER
from batchd.limits.preparation import work_owner
from batchd.limits.tiers import ADMIN_TIER, Tier


@dataclass(frozen=True)
class Principal:
    key_id: str
    owner: str
    role: str
    tier_name: str
    tier: Tier

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """Whose objects this caller may see: its owner's, or everyone's for an admin."""
        return None if self.is_admin else self.owner


def _redact(secret: str) -> str:
    return secret[:5] + "*" * 8 + secret[-4:] if len(secret) > 12 else "*" * 8


def _failed_attempts_exhausted(request: Request, *, take: bool) -> None:
    """Failed authentications are limited per client address (guessing keys costs time); an
    address over the limit is answered 429 without its key even being looked at."""
    svc = services(request)
    per_minute = svc.settings.auth_failures_per_minute
    address = f"auth-failures:{request.client.host if request.client else '?'}"
    limiter = svc.auth_failures
    now = svc.clock.now()
    decision = (limiter.check(address, per_minute=per_minute, now=now) if take
                else limiter.peek(address, per_minute=per_minute, now=now))
    if not decision.allowed:
        retry = decision.headers()["retry-after"]
        raise RateLimited(
            f"Too many failed authentication attempts from this address; try again in "
            f"{retry}s.", code="too_many_failed_authentications",
            headers={"retry-after": retry})


async def _authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    _failed_attempts_exhausted(request, take=False)
    if scheme.lower() != "bearer" or not secret:
        _failed_attempts_exhausted(request, take=True)
        raise Unauthenticated(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    svc = services(request)
    tiers = svc.tiers
    env_key = svc.settings.api_key
    if env_key and hmac.compare_digest(secret.encode(), env_key.encode()):
        return Principal(key_id="env", owner=OPERATOR_OWNER, role="admin", tier_name=ADMIN_TIER,
                         tier=tiers.tiers.get(ADMIN_TIER, Tier()))
    key = await svc.keys.authenticate(secret)
    if key is None:
        _failed_attempts_exhausted(request, take=True)
        raise Unauthenticated(f"Incorrect API key provided: {_redact(secret)}.",
                              code="invalid_api_key")
    _, tier = tiers.resolve(key.tier)
    return Principal(key_id=key.id, owner=key.owner, role=key.role, tier_name=key.tier,
                     tier=tier)


async def authenticate_request(request: Request) -> Principal:
    """Who is calling, within their rate limit; remembered on the request for `Caller`."""
    principal = await _authenticate(request)
    per_minute = principal.tier.requests_per_minute
    if per_minute is not None:
        svc = services(request)
        decision = svc.rate_limiter.check(principal.key_id, per_minute=per_minute,
                                          now=svc.clock.now())
        request.state.rate_limit_headers = decision.headers()
        if not decision.allowed:
            raise RateLimited(
                f"Rate limit reached for requests: limit {per_minute} per minute on the "
                f"'{principal.tier_name}' tier. Please try again in "
                f"{decision.headers()['retry-after']}s.",
                code="rate_limit_exceeded", headers=decision.headers())
    request.state.principal = principal
    # Engines share their real-time slots fairly across owners: everything this request
    # awaits (in this task, streams included) is this owner's work.
    work_owner.set(principal.owner)
    return principal


async def current_principal(request: Request) -> Principal:
    """The caller, as `AuthenticatedRoute` settled it before the body was read."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal if principal is not None else await authenticate_request(request)


async def admin_principal(caller: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not caller.is_admin:
        raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")
    return caller


Caller = Annotated[Principal, Depends(current_principal)]
Admin = Annotated[Principal, Depends(admin_principal)]
