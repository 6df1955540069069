"""API keys: random secrets with a recognisable prefix, stored only as a SHA-256 hash.

A SHA-256 of a 256-bit random secret cannot be reversed or guessed, so a fast hash is the right
tool here (password hashing is for low-entropy secrets); lookups are by hash, so no secret is
ever compared character by character.
"""

from __future__ import annotations

import hashlib
import secrets

from batchd.clock import Clock
from batchd.errors import InvalidRequest, NotFound
from batchd.store.records import ApiKey
from batchd.store.roles import ApiStore

KEY_PREFIX = "bd-"
# The owner of BATCHD_API_KEY and of the key made on a first start: the operator. No other key
# may be given it, or it would share the operator's files and batches.
OPERATOR_OWNER = "default"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, *, store: ApiStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(self, *, name: str, owner: str | None = None, role: str = "user",
                     tier: str = "core") -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and never stored."""
        owner = owner or name
        if owner == OPERATOR_OWNER:
            raise InvalidRequest(f"The owner '{OPERATOR_OWNER}' is reserved for the operator's "
                                 "own key; choose another owner (or name).",
                                 code="invalid_value", param="owner")
        return await self._create(name=name, owner=owner, role=role, tier=tier)

    async def create_operator_key(self, *, tier: str) -> tuple[ApiKey, str]:
        """The admin key made on a first start, owned by the operator like BATCHD_API_KEY."""
        return await self._create(name=OPERATOR_OWNER, owner=OPERATOR_OWNER, role="admin",
                                  tier=tier)

    async def _create(self, *, name: str, owner: str, role: str,
                      tier: str) -> tuple[ApiKey, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=f"key_{secrets.token_hex(8)}", name=name, owner=owner, role=role,
                     prefix=secret[:10], created_at=int(self.clock.now()), revoked_at=None,
                     tier=tier)
        await self.store.insert_key(key, key_hash=hash_key(secret))
        return key, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        key = await self.store.find_key(hash_key(secret))
        if key is None or key.revoked_at is not None:
            return None
        return key

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke one key by its id; None if no active key has that id."""
        return await self.store.revoke_key(key_id, now=int(self.clock.now()))

    async def resolve(self, id_or_name: str) -> ApiKey:
        """The one active key with this id, or else with this name; a name that several
        active keys share is refused (their ids are listed), so nothing is revoked by chance."""
        active = [key for key in await self.list() if key.revoked_at is None]
        for key in active:
            if key.id == id_or_name:
                return key
        named = [key for key in active if key.name == id_or_name]
        if not named:
            raise NotFound(f"No active key with id or name '{id_or_name}'.", param="key_id")
        if len(named) > 1:
            raise InvalidRequest(
                f"{len(named)} active keys are named '{id_or_name}' "
                f"({', '.join(k.id for k in named)}); give the id of the one to revoke.",
                code="ambiguous_key_name", param="key_id")
        return named[0]

    async def list(self) -> list[ApiKey]:
        return await self.store.list_keys()
