"""Store verbs for webhooks: endpoints, the event outbox and deliveries.

Events are written by the same transaction that makes a batch terminal (`record_event`, called
from `finish_batch` and `fail_batch`), with one pending delivery per subscribed endpoint: a
status change and its notice commit together or not at all, and survive any crash after.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd import ids
from batchd.limits.errors import check_test_event_limits
from batchd.store import tables as t
from batchd.store.records import WebhookDelivery, WebhookEndpoint, WebhookEvent
from batchd.store.sql import Database, by_id, lock_owner, notify_work, owned, shielded


class _TooMany(Exception):
    """Rolls the insert back: the owner has as many endpoints as allowed."""


async def record_event(conn: AsyncConnection, *, owner: str, type_: str,
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
    await notify_work(conn)
    return event_id


class SqlWebhooks:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- endpoints ---------------------------------------------------------------------------

    @shielded
    async def insert_endpoint(self, endpoint: WebhookEndpoint, *, max_per_owner: int) -> bool:
        """Store it unless its owner already has `max_per_owner` endpoints (False then)."""
        w = t.webhook_endpoints.c
        try:
            async with self._db.write() as conn:
                await lock_owner(conn, endpoint.owner)
                await conn.execute(t.webhook_endpoints.insert().values(**t.as_row(endpoint)))
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
        async with self._db.read() as conn:
            rows = (await conn.execute(
                owned(select(t.webhook_endpoints), w.owner, owner)
                .where(w.deleted_at.is_(None)).order_by(w.created_at, w.id))).mappings()
            return [WebhookEndpoint.from_row(r) for r in rows]

    async def get_endpoint(self, endpoint_id: str, *, owner: str | None) -> WebhookEndpoint | None:
        row = await self._db.one(by_id(t.webhook_endpoints, endpoint_id, owner)
                                 .where(t.webhook_endpoints.c.deleted_at.is_(None)))
        return WebhookEndpoint.from_row(row) if row else None

    @shielded
    async def update_endpoint(self, endpoint_id: str, *, owner: str | None,
                              **values: Any) -> WebhookEndpoint | None:
        w = t.webhook_endpoints.c
        async with self._db.write() as conn:
            row = (await conn.execute(
                owned(update(t.webhook_endpoints), w.owner, owner)
                .where(w.id == endpoint_id, w.deleted_at.is_(None))
                .values(**values).returning(*t.webhook_endpoints.c))).mappings().first()
        return WebhookEndpoint.from_row(row) if row else None

    # --- the outbox --------------------------------------------------------------------------

    @shielded
    async def record_test_event(self, endpoint: WebhookEndpoint, *, now: int,
                                per_endpoint: int, per_owner: int,
                                window: int = 60) -> str | None:
        """A `webhook.test` event to `endpoint`, unless the endpoint already had
        `per_endpoint` or its owner `per_owner` test events in the last `window` seconds
        (TooManyTestEvents). Counted in the store, so the limits hold across API processes."""
        d, e, w = t.webhook_deliveries.c, t.webhook_events.c, t.webhook_endpoints.c
        since = now - window
        async with self._db.write() as conn:
            await lock_owner(conn, endpoint.owner)  # racing requests count in turn
            recent = (select(d.endpoint_id, d.created_at)
                      .join(t.webhook_events, e.id == d.event_id)
                      .where(e.type == "webhook.test", d.created_at > since,
                             d.endpoint_id.in_(select(w.id).where(
                                 w.owner == endpoint.owner))))
            check_test_event_limits(
                ((r.endpoint_id, r.created_at) for r in await conn.execute(recent)),
                endpoint_id=endpoint.id, now=now, per_endpoint=per_endpoint,
                per_owner=per_owner, window=window)
            return await record_event(
                conn, owner=endpoint.owner, type_="webhook.test", now=now,
                data={"id": endpoint.id, "object": "webhook_endpoint"}, only=endpoint.id)

    # --- deliveries --------------------------------------------------------------------------

    @shielded
    async def claim_deliveries(
        self, *, now: float, lease_seconds: float, limit: int, per_owner: int,
        per_endpoint: int,
    ) -> list[tuple[WebhookDelivery, WebhookEvent, WebhookEndpoint]]:
        """Lease up to `limit` due deliveries (pending and due, or held by a sender that
        vanished) of enabled endpoints, fairly: round-robin by owner (each owner's oldest
        first, then each one's second...), and never more than `per_owner` and
        `per_endpoint` in flight (leased, by any worker) at once. An owner whose receivers
        hang thus holds a few slots, not all of them, and not for everyone else's turn.

        The ranking reads without locks; the rows are then locked (skipping those another
        worker is claiming) and the lease condition checked again, so no delivery is ever
        claimed twice. Two workers claiming at the same moment may each take an owner's
        share once: the caps hold from the next claim on."""
        d, w = t.webhook_deliveries.c, t.webhook_endpoints.c
        # Mostly there is nothing due: a read says so without the fair ranking's query or a
        # write transaction (on SQLite, the one writer's lock that chunk commits queue for).
        if await self._db.one(select(d.id).where(d.state == "pending", d.next_attempt_at <= now)
                              .limit(1)) is None:
            return []
        in_flight = and_(d.state == "pending", d.lease_until >= now)
        free = or_(d.lease_until.is_(None), d.lease_until < now)
        busy_endpoints = (select(d.endpoint_id, func.count().label("n"))
                          .where(in_flight).group_by(d.endpoint_id).subquery())
        busy_owners = (select(w.owner, func.count().label("n"))
                       .select_from(t.webhook_deliveries.join(
                           t.webhook_endpoints, w.id == d.endpoint_id))
                       .where(in_flight).group_by(w.owner).subquery())
        # Deliveries to a disabled endpoint wait, pending, until it is enabled again.
        due = (select(d.id, d.endpoint_id, d.next_attempt_at, w.owner,
                      func.row_number().over(partition_by=d.endpoint_id,
                                             order_by=(d.next_attempt_at, d.id)).label("nth"))
               .select_from(t.webhook_deliveries.join(
                   t.webhook_endpoints, w.id == d.endpoint_id))
               .where(d.state == "pending", d.next_attempt_at <= now, w.disabled_at.is_(None),
                      free)
               .subquery())
        # Ranked within each owner among what its endpoints' caps leave (a window is
        # computed after the WHERE of its own SELECT, hence the nesting).
        room = (select(due.c.id, due.c.owner, due.c.next_attempt_at,
                       func.row_number().over(partition_by=due.c.owner,
                                              order_by=(due.c.next_attempt_at, due.c.id))
                       .label("turn"))
                .select_from(due.outerjoin(busy_endpoints,
                                           busy_endpoints.c.endpoint_id == due.c.endpoint_id))
                .where(due.c.nth + func.coalesce(busy_endpoints.c.n, 0) <= per_endpoint)
                .subquery())
        fair = (select(room.c.id)
                .select_from(room.outerjoin(busy_owners, busy_owners.c.owner == room.c.owner))
                .where(room.c.turn + func.coalesce(busy_owners.c.n, 0) <= per_owner)
                .order_by(room.c.turn, room.c.next_attempt_at, room.c.id).limit(limit))
        locked = (select(d.id)
                  .where(d.id.in_(fair), d.state == "pending", d.next_attempt_at <= now, free)
                  .with_for_update(skip_locked=True, of=t.webhook_deliveries))
        async with self._db.write() as conn:
            rows = (await conn.execute(
                update(t.webhook_deliveries).where(d.id.in_(locked), free)
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
        async with self._db.write() as conn:
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
        async with self._db.read() as conn:
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
