"""Store verbs for API keys. Only a key's hash is stored, never its secret."""

from __future__ import annotations

from sqlalchemy import select, update

from batchd.store import tables as t
from batchd.store.records import ApiKey
from batchd.store.sql import Database, shielded


class SqlKeys:
    def __init__(self, db: Database) -> None:
        self._db = db

    @shielded
    async def insert_key(self, key: ApiKey, *, key_hash: str) -> None:
        """Store a key (only its hash; the secret is never stored)."""
        async with self._db.write() as conn:
            await conn.execute(t.api_keys.insert().values(**t.as_row(key), key_hash=key_hash))

    async def find_key(self, key_hash: str) -> ApiKey | None:
        row = await self._db.one(select(t.api_keys).where(t.api_keys.c.key_hash == key_hash))
        return ApiKey.from_row(row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.id)
            )).mappings()
            return [ApiKey.from_row(r) for r in rows]

    @shielded
    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey | None:
        """Revoke the active key with this id; None if there is none."""
        async with self._db.write() as conn:
            row = (await conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
                .returning(*t.api_keys.c)
            )).mappings().first()
        return ApiKey.from_row(row) if row else None
