"""Usage and what it cost: the service behind OpenAI's Usage and Costs APIs.

Usage is recorded by the store (store/usage.py): a batch's in the fenced writes that record
its result parts, a real-time answer's here, as it is produced. Costs are usage priced by the
models file's `prices` when it is read, so a price change applies to past usage too (the
usage itself never changes)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from batchd.clock import Clock
from batchd.engines.registry import ModelRegistry
from batchd.store.records import UsageAdd, UsageQuery
from batchd.store.roles import ApiStore
from batchd.store.usage import minute_of, usage_kind

KINDS = ("completions", "embeddings")


@dataclass
class CostTotals:
    """Amounts by (bucket start, project or None, line item or None), and the models that
    had usage but no prices."""

    amounts: dict[tuple[int, str | None, str | None], dict[str, Any]] = field(
        default_factory=dict)
    unpriced: set[str] = field(default_factory=set)


class GroupCommit:
    """Real-time usage written in shared transactions: every answer waits until its usage
    is durable (as before it is sent), but the answers that finish while one write runs go
    together in the next, so a busy server makes one write per round, not per answer."""

    def __init__(self, write: Callable[[list[UsageAdd]], Awaitable[None]]) -> None:
        self._write = write
        self._waiting: list[tuple[UsageAdd, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, usage: UsageAdd) -> None:
        """Returns once `usage` is written; raises what the write raised."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((usage, done))
        if self._writer is None or self._writer.done():
            # Its own task: an answer whose client goes away does not cut the others' write.
            self._writer = asyncio.create_task(self._write_all(), name="usage:group-commit")
        await done

    async def _write_all(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                await self._write([usage for usage, _ in group])
            except asyncio.CancelledError:  # shutting down: nobody is left to answer
                for _, done in group:
                    done.cancel()
                raise
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in group:
                    if not done.done():
                        done.set_result(None)


class UsageService:
    def __init__(self, *, store: ApiStore, clock: Clock, registry: ModelRegistry) -> None:
        self.store = store
        self.clock = clock
        self.registry = registry
        self._realtime = GroupCommit(store.record_usage)

    async def add_realtime(self, *, owner: str, key_id: str, model: str, endpoint: str,
                           requests: int, input_tokens: int, output_tokens: int,
                           cached_tokens: int = 0) -> None:
        """One real-time answer's usage (or a part of it: `requests` 0 for the rest)."""
        await self._realtime.add(UsageAdd(
            minute=minute_of(self.clock.now()), owner=owner, key_id=key_id,
            model=self.registry.served_id(model) or model, kind=usage_kind(endpoint),
            batch=False, requests=requests, input_tokens=input_tokens,
            cached_tokens=cached_tokens, output_tokens=output_tokens))

    async def read(self, query: UsageQuery) -> list[dict[str, Any]]:
        return await self.store.read_usage(query)

    async def costs(self, query: UsageQuery, *, by_project: bool,
                    by_line_item: bool) -> CostTotals:
        """Every kind's usage in `query`'s buckets, priced."""
        totals = CostTotals()
        for kind in KINDS:
            rows = await self.store.read_usage(dataclasses.replace(
                query, kind=kind, group_by=("owner", "model", "batch")))
            for row in rows:
                prices = self.registry.prices(row["model"])
                if prices is None:
                    totals.unpriced.add(row["model"])
                    items = dict.fromkeys(("input", "cached input", "output"), 0.0)
                    currency = "usd"
                else:
                    items = prices.cost(input_tokens=row["input_tokens"],
                                        cached_tokens=row["cached_tokens"],
                                        output_tokens=row["output_tokens"],
                                        batch=bool(row["batch"]))
                    currency = prices.currency
                for item, amount in items.items():
                    line_item = (f"{row['model']}, {'batch ' if row['batch'] else ''}{item}"
                                 if by_line_item else None)
                    key = (int(row["start"]), row["owner"] if by_project else None, line_item)
                    total = totals.amounts.setdefault(key, {"value": 0.0,
                                                            "currency": currency})
                    total["value"] += amount
        return totals
