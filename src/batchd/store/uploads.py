"""Store verbs for the Uploads API: an upload, its parts, and the end of either."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update

from batchd.store import tables as t
from batchd.store.records import FileRecord, UploadPart, UploadRecord
from batchd.store.sql import SqlStore, as_row, owned, shielded


class UploadStore(SqlStore):
    @shielded
    async def insert_upload(self, upload: UploadRecord) -> None:
        async with self._write() as conn:
            await conn.execute(t.uploads.insert().values(**as_row(upload)))

    async def get_upload(self, upload_id: str, *, owner: str | None) -> UploadRecord | None:
        u = t.uploads.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                owned(select(t.uploads), u.owner, owner).where(u.id == upload_id)
            )).mappings().first()
        return UploadRecord.from_row(row) if row else None

    @shielded
    async def add_part(self, part: UploadPart) -> bool:
        """Record a stored part, only while its upload is pending (False otherwise)."""
        u = t.uploads.c
        async with self._write() as conn:
            # The update comes first (SQLite's write lock) and proves the upload is pending.
            still = await conn.execute(
                update(t.uploads).where(u.id == part.upload_id, u.status == "pending")
                .values(status="pending"))
            if still.rowcount != 1:
                return False
            await conn.execute(t.upload_parts.insert().values(**as_row(part)))
        return True

    async def list_parts(self, upload_id: str) -> list[UploadPart]:
        p = t.upload_parts.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.upload_parts).where(p.upload_id == upload_id)
                .order_by(p.created_at, p.id))).mappings()
            return [UploadPart.from_row(r) for r in rows]

    @shielded
    async def complete_upload(self, upload_id: str, file: FileRecord) -> bool:
        """The upload becomes `completed` with its file, in one transaction (False if it was
        no longer pending: cancelled, expired or completed meanwhile)."""
        u = t.uploads.c
        async with self._write() as conn:
            done = await conn.execute(
                update(t.uploads).where(u.id == upload_id, u.status == "pending")
                .values(status="completed", file_id=file.id))
            if done.rowcount != 1:
                return False
            await conn.execute(t.files.insert().values(
                **as_row(file) | {"seq": self._next_seq(t.files)}))
        return True

    @shielded
    async def end_uploads(self, upload_ids: Sequence[str], *, status: str) -> list[str]:
        """Move pending uploads to `status` (cancelled, expired); the ids that moved."""
        u = t.uploads.c
        if not upload_ids:
            return []
        async with self._write() as conn:
            rows = (await conn.execute(
                update(t.uploads).where(u.id.in_(list(upload_ids)), u.status == "pending")
                .values(status=status).returning(u.id))).all()
        return [r[0] for r in rows]

    async def overdue_uploads(self, *, now: int) -> list[str]:
        u = t.uploads.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(u.id).where(u.status == "pending", u.expires_at <= now))).all()
        return [r[0] for r in rows]

    @shielded
    async def forget_parts(self, upload_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(t.upload_parts.delete().where(
                t.upload_parts.c.upload_id == upload_id))

