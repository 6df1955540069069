"""Store verbs for files: their records (the bytes are blobs), listing, deletion and expiry.

A deleted file is only hidden at first: its blob stays while an active batch still reads it,
and its record goes with the blob (`deleted_files_unused`, then `forget_file`)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import exists, select, update

from batchd.store import tables as t
from batchd.store.records import ACTIVE_STATUSES, FileRecord
from batchd.store.sql import Database, by_id, next_seq, owned, page, shielded


class SqlFiles:
    def __init__(self, db: Database) -> None:
        self._db = db

    @shielded
    async def insert_file(self, record: FileRecord) -> FileRecord:
        async with self._db.write() as conn:
            seq = (await conn.execute(
                t.files.insert().values(**t.as_row(record) | {"seq": next_seq(conn, t.files)})
                .returning(t.files.c.seq))).scalar_one()
        return dataclasses.replace(record, seq=seq)

    async def get_file(self, file_id: str, *, owner: str | None) -> FileRecord | None:
        """A live (not deleted) file; `owner=None` looks across owners (workers)."""
        row = await self._db.one(
            by_id(t.files, file_id, owner).where(t.files.c.deleted_at.is_(None)))
        return FileRecord.from_row(row) if row else None

    async def list_files(
        self, *, owner: str | None, purpose: str | None, limit: int, ascending: bool,
        after: str | None,
    ) -> tuple[list[FileRecord], bool]:
        """`owner=None` lists every owner's files (admins)."""
        c = t.files.c
        query = owned(select(t.files), c.owner, owner).where(c.deleted_at.is_(None))
        if purpose is not None:
            query = query.where(c.purpose == purpose)
        async with self._db.read() as conn:
            rows, more = await page(conn, t.files, query, owner=owner, after=after,
                                    limit=limit, ascending=ascending)
        return [FileRecord.from_row(r) for r in rows], more

    @shielded
    async def delete_file(self, file_id: str, *, owner: str | None,
                          now: int) -> FileRecord | None:
        """Hide the file. Its blob stays while an active batch still reads it."""
        async with self._db.write() as conn:
            row = (await conn.execute(
                owned(update(t.files).where(t.files.c.id == file_id), t.files.c.owner, owner)
                .where(t.files.c.deleted_at.is_(None))
                .values(deleted_at=now)
                .returning(*t.files.c)
            )).mappings().first()
        return FileRecord.from_row(row) if row else None

    async def deleted_files_unused(self) -> list[FileRecord]:
        """Deleted files whose blob no active batch needs any more (ready to purge)."""
        b = t.batches.c
        in_use = exists().where(b.input_file_id == t.files.c.id, b.status.in_(ACTIVE_STATUSES))
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(t.files).where(t.files.c.deleted_at.is_not(None), ~in_use)
            )).mappings()
            return [FileRecord.from_row(r) for r in rows]

    @shielded
    async def expire_files(self, *, now: int) -> int:
        """Files whose `expires_at` passed are deleted, as OpenAI does (their bytes go once no
        running batch reads them)."""
        c = t.files.c
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t.files)
                .where(c.deleted_at.is_(None), c.expires_at.is_not(None), c.expires_at <= now)
                .values(deleted_at=now)
            )
            return result.rowcount

    @shielded
    async def forget_file(self, file_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(t.files.delete().where(t.files.c.id == file_id))
