"""The limits a store verb refuses to pass: business rules that the store checks inside its
write transaction (so that racing requests cannot pass them together), and that the services
turn into the answers a client sees. Any store, SQL or in-memory, raises these."""

from __future__ import annotations

from collections.abc import Iterable


class ActiveBatchLimit(Exception):
    """Creating a batch would give its owner more unfinished batches than allowed."""

    def __init__(self, *, active: int, limit: int) -> None:
        super().__init__(active)
        self.active, self.limit = active, limit


class QuotaExceeded(Exception):
    """Enqueuing a batch would take an owner past its token limit for a model."""

    def __init__(self, *, model: str, enqueued: int, requested: int, limit: int) -> None:
        super().__init__(model)
        self.model, self.enqueued, self.requested, self.limit = (model, enqueued, requested,
                                                                 limit)


class PendingUploadLimit(Exception):
    """Creating an upload would give its owner more unfinished uploads than allowed."""

    def __init__(self, *, pending: int, limit: int) -> None:
        super().__init__(pending)
        self.pending, self.limit = pending, limit


class PartLimit(Exception):
    """A part would take its upload past a limit: `what` is "parts" (their number) or
    "bytes" (their total); `held` is what the upload already has."""

    def __init__(self, *, what: str, held: int, limit: int) -> None:
        super().__init__(what)
        self.what, self.held, self.limit = what, held, limit


class TooManyTestEvents(Exception):
    """Too many test events lately: at most `limit` per `scope` ("endpoint" or "owner") in
    `window` seconds; one more is allowed in `retry_after` seconds."""

    def __init__(self, limit: int, scope: str, window: int, *, retry_after: int) -> None:
        super().__init__(f"{limit} test events per {scope} in {window} s")
        self.limit, self.scope, self.window = limit, scope, window
        self.retry_after = max(1, retry_after)


def check_test_event_limits(recent: Iterable[tuple[str, int]], *, endpoint_id: str, now: int,
                            per_endpoint: int, per_owner: int, window: int) -> None:
    """Refuse one more test event to `endpoint_id` (`TooManyTestEvents`) if `recent`, the
    (endpoint, time) of its owner's test events in the last `window` seconds, already holds
    `per_endpoint` of this endpoint's or `per_owner` in all."""
    times = list(recent)
    mine = sorted(at for endpoint, at in times if endpoint == endpoint_id)
    if len(mine) >= per_endpoint:
        raise TooManyTestEvents(per_endpoint, "endpoint", window,
                                retry_after=mine[-per_endpoint] + window - now)
    owners = sorted(at for _, at in times)
    if len(owners) >= per_owner:
        raise TooManyTestEvents(per_owner, "owner", window,
                                retry_after=owners[-per_owner] + window - now)
