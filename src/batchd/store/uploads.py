"""Store verbs for the Uploads API: an upload, its parts, and the end of either.

An upload moves `pending` → `completing` → `completed`, or `pending` → `cancelled` /
`expired`. Each move is one `UPDATE … WHERE status = …`, so two requests racing on one upload
(complete against cancel, a part against either) are ordered by the database: exactly one
wins. `completing` is the claim a completion holds while it reads the parts; nothing else
moves an upload out of it, so its parts cannot be deleted under it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select, update

from batchd.limits.errors import PartLimit, PendingUploadLimit
from batchd.store import tables as t
from batchd.store.records import FileRecord, UploadPart, UploadRecord
from batchd.store.sql import Database, by_id, lock_owner, next_seq, shielded


class SqlUploads:
    def __init__(self, db: Database) -> None:
        self._db = db

    @shielded
    async def insert_upload(self, upload: UploadRecord, *,
                            max_pending: int | None = None) -> None:
        """Store a new upload; with `max_pending`, only if its owner then has at most that
        many unfinished ones (`PendingUploadLimit` otherwise), counted in the same
        transaction so that racing creates cannot pass the limit together."""
        u = t.uploads.c
        async with self._db.write() as conn:
            if max_pending is not None:
                await lock_owner(conn, upload.owner)
            # The insert comes first: on SQLite it takes the write lock, so the count below
            # sees every other create of this owner.
            await conn.execute(t.uploads.insert().values(**t.as_row(upload)))
            if max_pending is not None:
                pending = (await conn.execute(
                    select(func.count()).select_from(t.uploads).where(
                        u.owner == upload.owner,
                        or_(u.status == "completing",
                            and_(u.status == "pending", u.expires_at > upload.created_at)))
                )).scalar_one()
                if pending > max_pending:
                    raise PendingUploadLimit(pending=int(pending) - 1, limit=max_pending)

    async def get_upload(self, upload_id: str, *, owner: str | None) -> UploadRecord | None:
        row = await self._db.one(by_id(t.uploads, upload_id, owner))
        return UploadRecord.from_row(row) if row else None

    @shielded
    async def add_part(self, part: UploadPart, *, max_parts: int | None = None,
                       max_bytes: int | None = None) -> bool:
        """Record a stored part, only while its upload is pending (False otherwise), and
        only if the upload then has at most `max_parts` parts holding at most `max_bytes`
        bytes (`PartLimit` otherwise)."""
        u, p = t.uploads.c, t.upload_parts.c
        async with self._db.write() as conn:
            # The update comes first (SQLite's write lock; on PostgreSQL the upload's row
            # lock) and proves the upload is pending: parts of one upload are recorded one
            # at a time, so the totals below include every part recorded before this one.
            still = await conn.execute(
                update(t.uploads).where(u.id == part.upload_id, u.status == "pending")
                .values(status="pending"))
            if still.rowcount != 1:
                return False
            count, held = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(p.bytes), 0))
                .where(p.upload_id == part.upload_id))).one()
            if max_parts is not None and count + 1 > max_parts:
                raise PartLimit(what="parts", held=int(count), limit=max_parts)
            if max_bytes is not None and held + part.bytes > max_bytes:
                raise PartLimit(what="bytes", held=int(held), limit=max_bytes)
            await conn.execute(t.upload_parts.insert().values(**t.as_row(part)))
        return True

    async def part_totals(self, upload_id: str) -> tuple[int, int]:
        """How many parts the upload has, and their bytes."""
        p = t.upload_parts.c
        async with self._db.read() as conn:
            count, held = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(p.bytes), 0))
                .where(p.upload_id == upload_id))).one()
        return int(count), int(held)

    async def list_parts(self, upload_id: str) -> list[UploadPart]:
        p = t.upload_parts.c
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(t.upload_parts).where(p.upload_id == upload_id)
                .order_by(p.created_at, p.id))).mappings()
            return [UploadPart.from_row(r) for r in rows]

    @shielded
    async def claim_upload(self, upload_id: str, *, now: int) -> bool:
        """Take a pending, unexpired upload for completion (`completing`): from here no part,
        cancel or expiry can change it until `complete_upload` or `release_upload`. False
        if it was not pending (another request won)."""
        u = t.uploads.c
        async with self._db.write() as conn:
            claimed = await conn.execute(
                update(t.uploads).where(u.id == upload_id, u.status == "pending",
                                        u.expires_at > now)
                .values(status="completing"))
        return bool(claimed.rowcount == 1)

    @shielded
    async def release_upload(self, upload_id: str) -> None:
        """Give a claimed upload back (`pending`): its completion failed and may be retried."""
        u = t.uploads.c
        async with self._db.write() as conn:
            await conn.execute(
                update(t.uploads).where(u.id == upload_id, u.status == "completing")
                .values(status="pending"))

    @shielded
    async def complete_upload(self, upload_id: str, file: FileRecord) -> bool:
        """The claimed upload becomes `completed` with its file, in one transaction (False if
        the claim was lost: only an abandoned claim is taken away, by `expire_uploads`)."""
        u = t.uploads.c
        async with self._db.write() as conn:
            done = await conn.execute(
                update(t.uploads).where(u.id == upload_id, u.status == "completing")
                .values(status="completed", file_id=file.id))
            if done.rowcount != 1:
                return False
            await conn.execute(t.files.insert().values(
                **t.as_row(file) | {"seq": next_seq(conn, t.files)}))
        return True

    @shielded
    async def end_uploads(self, upload_ids: Sequence[str], *, status: str) -> list[str]:
        """Move pending uploads to `status` (cancelled, expired); the ids that moved. An
        upload being completed is not pending: its parts are being read."""
        u = t.uploads.c
        if not upload_ids:
            return []
        async with self._db.write() as conn:
            rows = (await conn.execute(
                update(t.uploads).where(u.id.in_(list(upload_ids)), u.status == "pending")
                .values(status=status).returning(u.id))).all()
        return [r[0] for r in rows]

    @shielded
    async def expire_uploads(self, *, now: int, abandoned_before: int) -> list[str]:
        """Pending uploads past `expires_at`, and claims whose process must have died (still
        `completing` though they expired before `abandoned_before`), become `expired`; the
        ids that moved."""
        u = t.uploads.c
        async with self._db.write() as conn:
            rows = (await conn.execute(
                update(t.uploads).where(or_(
                    and_(u.status == "pending", u.expires_at <= now),
                    and_(u.status == "completing", u.expires_at <= abandoned_before)))
                .values(status="expired").returning(u.id))).all()
        return [r[0] for r in rows]

    @shielded
    async def forget_parts(self, upload_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(t.upload_parts.delete().where(
                t.upload_parts.c.upload_id == upload_id))
