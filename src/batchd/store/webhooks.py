"""Store verbs for webhooks: endpoints, the event outbox and deliveries.

Events are written by the same transaction that makes a batch terminal (`record_event`, called
from `finish_batch` and `fail_batch`), with one pending delivery per subscribed endpoint: a
status change and its notice commit together or not at all, and survive any crash after.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd import ids
from batchd.store import tables as t
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.store.sql import SqlStore, as_row, owned, shielded


class _TooMany(Exception):
    """Rolls the insert back: the owner has as many endpoints as allowed."""


class WebhookStore(SqlStore):
    # --- endpoints ---------------------------------------------------------------------------

    @shielded
    async def insert_endpoint(self, endpoint: WebhookEndpoint, *, max_per_owner: int) -> bool:
        """Store it unless its owner already has `max_per_owner` endpoints (False then)."""
        w = t.webhook_endpoints.c
        try:
            async with self._write() as conn:
                await self._lock_owner(conn, endpoint.owner)
                await conn.execute(t.webhook_endpoints.insert().values(**as_row(endpoint)))
                count = (await conn.execute(
                    select(func.count()).select_from(t.webhook_endpoints)
                    .where(w.owner == endpoint.owner, w.deleted_at.is_(None)))).scalar_one()
                if count > max_per_owner:
                    raise _TooMany  # rolls the insert back
        except _TooMany:
            return False
        return True

    async def list_endpoints(self, *, owner: str | None) -> list[WebhookEndpoint]:
        w = t.webhook_endpoints.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                owned(select(t.webhook_endpoints), w.owner, owner)
                .where(w.deleted_at.is_(None)).order_by(w.created_at, w.id))).mappings()
            return [WebhookEndpoint.from_row(r) for r in rows]

    async def get_endpoint(self, endpoint_id: str, *, owner: str | None) -> WebhookEndpoint | None:
        w = t.webhook_endpoints.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                owned(select(t.webhook_endpoints), w.owner, owner)
                .where(w.id == endpoint_id, w.deleted_at.is_(None)))).mappings().first()
        return WebhookEndpoint.from_row(row) if row else None

    @shielded
    async def update_endpoint(self, endpoint_id: str, *, owner: str | None,
                              **values: Any) -> WebhookEndpoint | None:
        w = t.webhook_endpoints.c
        async with self._write() as conn:
            row = (await conn.execute(
                owned(update(t.webhook_endpoints), w.owner, owner)
                .where(w.id == endpoint_id, w.deleted_at.is_(None))
                .values(**values).returning(*t.webhook_endpoints.c))).mappings().first()
        return WebhookEndpoint.from_row(row) if row else None

    # --- the outbox --------------------------------------------------------------------------

    async def record_event(self, conn: AsyncConnection, *, owner: str, type_: str,
                           data: dict[str, Any], now: int,
                           only: str | None = None) -> str | None:
        """Within the caller's transaction: the event, and a pending delivery to each of the
        owner's enabled endpoints that subscribed to its type (or to `only`)."""
        w = t.webhook_endpoints.c
        query = select(t.webhook_endpoints).where(
            w.owner == owner, w.deleted_at.is_(None), w.disabled_at.is_(None))
        if only is not None:
            query = query.where(w.id == only)
        endpoints = [WebhookEndpoint.from_row(r)
                     for r in (await conn.execute(query)).mappings()]
        targets = [e for e in endpoints if only is not None or type_ in e.events]
        if not targets:
            return None
        event_id = ids.event_id()
        await conn.execute(t.webhook_events.insert().values(
            id=event_id, owner=owner, type=type_, created_at=now, data=data))
        await conn.execute(t.webhook_deliveries.insert(), [
            dict(id=ids.delivery_id(), event_id=event_id, endpoint_id=e.id, state="pending",
                 attempts=0, next_attempt_at=float(now), created_at=now, history=[])
            for e in targets])
        await self._notify_work(conn)
        return event_id

    @shielded
    async def record_test_event(self, endpoint: WebhookEndpoint, *, now: int) -> str | None:
        async with self._write() as conn:
            return await self.record_event(
                conn, owner=endpoint.owner, type_="webhook.test", now=now,
                data={"id": endpoint.id, "object": "webhook_endpoint"}, only=endpoint.id)

    # --- deliveries --------------------------------------------------------------------------

    @shielded
    async def claim_deliveries(
        self, *, now: float, lease_seconds: float, limit: int,
    ) -> list[tuple[WebhookDelivery, WebhookEvent, WebhookEndpoint]]:
        """Lease due deliveries (pending and due, or held by a sender that vanished) of
        enabled endpoints."""
        d, w = t.webhook_deliveries.c, t.webhook_endpoints.c
        # Deliveries to a disabled endpoint wait, pending, until it is enabled again.
        enabled = select(w.id).where(w.id == d.endpoint_id, w.disabled_at.is_(None)).exists()
        due = (select(d.id)
               .where(d.state == "pending", d.next_attempt_at <= now, enabled,
                      or_(d.lease_until.is_(None), d.lease_until < now))
               .order_by(d.next_attempt_at).limit(limit)
               .with_for_update(skip_locked=True, of=t.webhook_deliveries))
        async with self._write() as conn:
            rows = (await conn.execute(
                update(t.webhook_deliveries).where(d.id.in_(due))
                .values(lease_until=now + lease_seconds)
                .returning(*t.webhook_deliveries.c))).mappings().all()
            deliveries = [WebhookDelivery.from_row(r) for r in rows]
            if not deliveries:
                return []
            events = {r["id"]: WebhookEvent.from_row(r) for r in (await conn.execute(
                select(t.webhook_events).where(
                    t.webhook_events.c.id.in_({x.event_id for x in deliveries})))).mappings()}
            endpoints = {r["id"]: WebhookEndpoint.from_row(r) for r in (await conn.execute(
                select(t.webhook_endpoints).where(
                    t.webhook_endpoints.c.id.in_({x.endpoint_id for x in deliveries})
                ))).mappings()}
        return [(x, events[x.event_id], endpoints[x.endpoint_id]) for x in deliveries]

    @shielded
    async def finish_attempt(self, delivery: WebhookDelivery, *, attempt: dict[str, Any],
                             next_attempt_at: float | None, delivered: bool,
                             disable_reason: str | None, now: int) -> bool:
        """Record one attempt (fenced on the sender's lease): delivered, due again at
        `next_attempt_at`, or failed for good (and its endpoint disabled, saying why)."""
        d = t.webhook_deliveries.c
        state = ("delivered" if delivered else "pending" if next_attempt_at is not None
                 else "failed")
        async with self._write() as conn:
            result = await conn.execute(
                update(t.webhook_deliveries)
                .where(d.id == delivery.id, d.lease_until == delivery.lease_until)
                .values(state=state, attempts=delivery.attempts + 1, lease_until=None,
                        next_attempt_at=next_attempt_at or delivery.next_attempt_at,
                        history=[*delivery.history, attempt]))
            if result.rowcount != 1:
                return False
            if disable_reason is not None:
                w = t.webhook_endpoints.c
                await conn.execute(
                    update(t.webhook_endpoints)
                    .where(w.id == delivery.endpoint_id, w.disabled_at.is_(None))
                    .values(disabled_at=now, disabled_reason=disable_reason))
        return True

    async def list_deliveries(self, endpoint_id: str, *, limit: int
                              ) -> list[tuple[WebhookDelivery, WebhookEvent]]:
        d = t.webhook_deliveries.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.webhook_deliveries, t.webhook_events.c.type,
                       t.webhook_events.c.owner, t.webhook_events.c.data,
                       t.webhook_events.c.created_at.label("event_created_at"))
                .join(t.webhook_events, t.webhook_events.c.id == d.event_id)
                .where(d.endpoint_id == endpoint_id)
                .order_by(d.created_at.desc(), d.id.desc()).limit(limit))).mappings().all()
        return [(WebhookDelivery.from_row(r),
                 WebhookEvent(id=r["event_id"], owner=r["owner"], type=r["type"],
                              created_at=r["event_created_at"], data=r["data"]))
                for r in rows]
