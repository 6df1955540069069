"""API keys: random secrets with a recognisable prefix, stored only as a SHA-256 hash.

A SHA-256 of a 256-bit random secret cannot be reversed or guessed, so a fast hash is the right
tool here (password hashing is for low-entropy secrets); lookups are by hash, so no secret is
ever compared character by character.
"""

from __future__ import annotations

import hashlib
import secrets

from batchd.clock import Clock
from batchd.store.metadata import MetadataStore
from batchd.store.records import ApiKey

KEY_PREFIX = "bd-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, *, store: MetadataStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def create(self, *, name: str, owner: str | None = None, role: str = "user",
                     tier: str = "core") -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and never stored."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=f"key_{secrets.token_hex(8)}", name=name, owner=owner or name, role=role,
                     prefix=secret[:10], created_at=int(self.clock.now()), revoked_at=None,
                     tier=tier)
        await self.store.insert_key(key, key_hash=hash_key(secret))
        return key, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        key = await self.store.find_key(hash_key(secret))
        if key is None or key.revoked_at is not None:
            return None
        return key

    async def revoke(self, key_id_or_name: str) -> int:
        return await self.store.revoke_key(key_id_or_name, now=int(self.clock.now()))

    async def list(self) -> list[ApiKey]:
        return await self.store.list_keys()
