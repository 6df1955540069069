"""The in-memory "database" under the fake store (store/memory.py): rows by table and primary
key, filled with their columns' defaults (store/tables.py) and copied on their way in and
out as a database would, so that a caller cannot change a row by changing a record; and the
two queries the fake needs that Python does not have at hand, keyset paging and ranks within
groups."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Table

if TYPE_CHECKING:
    from batchd.store.records import _Record

Row = dict[str, Any]
R = TypeVar("R", bound="_Record")


def new_row(table: Table, values: Mapping[str, Any]) -> Row:
    """A new row of `table` as the database stores it: each column's default where `values`
    has none, and no object shared with the caller."""
    row: Row = {}
    for column in table.columns:
        default: Any = column.default
        if column.name in values:
            row[column.name] = copy.deepcopy(values[column.name])
        elif default is None:
            row[column.name] = None
        else:
            row[column.name] = default.arg(None) if default.is_callable else default.arg
    return row


def update(row: Row, **values: Any) -> None:
    row.update(copy.deepcopy(values))


def read(record: type[R], row: Row) -> R:
    return record.from_row(copy.deepcopy(row))


def insert(rows: dict[Any, Row], key: Any, row: Row) -> None:
    if key in rows:  # as a primary key would refuse it
        raise ValueError(f"a row with key {key!r} exists already")
    rows[key] = row


@dataclass
class MemoryTables:
    """One in-memory "database": its rows by table and primary key."""

    api_keys: dict[str, Row] = field(default_factory=dict)
    files: dict[str, Row] = field(default_factory=dict)
    batches: dict[str, Row] = field(default_factory=dict)
    batch_tokens: dict[tuple[str, str], Row] = field(default_factory=dict)
    chunks: dict[tuple[str, int], Row] = field(default_factory=dict)
    # The periodic jobs migration 0005 seeds, due at once.
    housekeeping: dict[str, Row] = field(
        default_factory=lambda: {"expiry": {"job": "expiry", "due_at": 0.0}})
    webhook_endpoints: dict[str, Row] = field(default_factory=dict)
    webhook_events: dict[str, Row] = field(default_factory=dict)
    webhook_deliveries: dict[str, Row] = field(default_factory=dict)
    uploads: dict[str, Row] = field(default_factory=dict)
    upload_parts: dict[str, Row] = field(default_factory=dict)
    usage: dict[tuple[Any, ...], Row] = field(default_factory=dict)
    seq: int = 0  # creation order of files and batches, as PostgreSQL's sequence
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def notify_work(self) -> None:
        """Wake every store listening for work on these tables (PostgreSQL's NOTIFY)."""
        for wake in list(self.listeners):
            wake()


def owns(owner: str | None, row: Row) -> bool:
    """Whether `owner` may see the row; `None` (an admin, a worker) sees every owner's."""
    return owner is None or row["owner"] == owner


def page(table: dict[str, Row], rows: Iterable[Row], *, owner: str | None,
         after: str | None, limit: int, ascending: bool) -> tuple[list[Row], bool]:
    """As store/sql.py's `page`: creation order, from just past `after` (a row of `owner`'s,
    live or not; any other gives an empty page)."""
    ordered = sorted(rows, key=lambda r: (r["seq"], r["id"]), reverse=not ascending)
    if after is not None:
        cursor = table.get(after)
        if cursor is None or not owns(owner, cursor):
            return [], False
        key = (cursor["seq"], cursor["id"])
        ordered = [r for r in ordered
                   if ((r["seq"], r["id"]) > key if ascending else (r["seq"], r["id"]) < key)]
    return ordered[:limit], len(ordered) > limit


def ranks(rows: list[Row], *, by: Callable[[Row], str]) -> dict[str, int]:
    """Each row's place (from 1) among the rows of its group, oldest due first: SQL's
    `row_number() OVER (PARTITION BY … ORDER BY next_attempt_at, id)`."""
    places: dict[str, int] = {}
    seen: Counter[str] = Counter()
    for row in sorted(rows, key=lambda r: (r["next_attempt_at"], r["id"])):
        seen[by(row)] += 1
        places[row["id"]] = seen[by(row)]
    return places
