"""/admin: key management over HTTP, for admin keys only."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from batchd.api.auth import Admin
from batchd.api.routing import AuthenticatedRoute
from batchd.api.state import services
from batchd.errors import InvalidRequest, NotFound
from batchd.store.records import ApiKey

router = APIRouter(prefix="/admin", tags=["admin"], route_class=AuthenticatedRoute)


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner: str
    role: str
    tier: str
    prefix: str
    created_at: int
    revoked_at: int | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyObject:
        return cls(id=key.id, name=key.name, owner=key.owner, role=key.role, tier=key.tier,
                   prefix=key.prefix, created_at=key.created_at, revoked_at=key.revoked_at)


class CreatedKey(KeyObject):
    secret: str = Field(description="Shown only in this response.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyObject]


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    tier: str | None = None
    role: Literal["user", "admin"] = "user"


@router.get("/keys", response_model=KeyList)
async def list_keys(request: Request, admin: Admin) -> KeyList:
    return KeyList(data=[KeyObject.of(k) for k in await services(request).keys.list()])


@router.post("/keys", response_model=CreatedKey)
async def create_key(request: Request, admin: Admin, body: CreateKeyRequest) -> CreatedKey:
    svc = services(request)
    tier = body.tier or svc.tiers.default_tier
    if tier not in svc.tiers.tiers:
        raise InvalidRequest(f"Unknown tier '{tier}'; known: {', '.join(svc.tiers.tiers)}.",
                             code="invalid_value", param="tier")
    key, secret = await svc.keys.create(name=body.name, owner=body.owner, role=body.role,
                                        tier=tier)
    return CreatedKey(**KeyObject.of(key).model_dump(), secret=secret)


@router.post("/keys/{key_id}/revoke", response_model=KeyObject)
async def revoke_key(request: Request, admin: Admin, key_id: str) -> KeyObject:
    """Revoke one key, named by its id (names are not unique)."""
    revoked = await services(request).keys.revoke(key_id)
    if revoked is None:
        raise NotFound(f"No active key with id '{key_id}'.", param="key_id")
    return KeyObject.of(revoked)
