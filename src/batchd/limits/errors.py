"""The limits a store verb refuses to pass: business rules that the store checks inside its
write transaction (so that racing requests cannot pass them together), and that the services
turn into the answers a client sees. Any store, SQL or in-memory, raises these."""

from __future__ import annotations


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
