"""Worker deaths are charged to the requests that were in flight, never to a whole chunk.

Before a run starts requests it records their custom_ids on the chunk (`in_flight`); a clean
end clears the record. So when a chunk is claimed with the record still set, its last worker
died (a crash, `kill -9`, an OOM kill, a lost host) while those requests were in flight, and
each of them that has no saved result gets a strike. The service's own deaths are retried
until the batch's deadline; a request is failed only once it is shown to kill the worker:

- one death: the request runs again first, as usual (most deaths are not its fault);
- two or more: it is re-run in shrinking groups with nothing else of the worker beside it,
  `lanes // 8 ** (deaths - 1)` at a time (4 then 1 for 32 lanes), so each death narrows the
  suspects;
- dying while it ran alone `limit` times (`BATCHD_MAX_ATTEMPTS`): it is failed, alone, with a
  `request_failed` line that says why. Every other request of the chunk runs to success.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from typing import Any, TypeVar

Strikes = dict[str, list[int]]
"""custom_id → [deaths it was in flight for, of which it ran alone]."""

R = TypeVar("R", bound=tuple[str, Any])  # a request: (custom_id, body)


def charge(strikes: Strikes | None, in_flight: dict[str, Any] | None,
           done: Collection[str]) -> Strikes:
    """The strikes after charging a death that left `in_flight` recorded. Requests with a
    saved result are forgiven: they finished, so the death came after them."""
    charged = {cid: list(n) for cid, n in (strikes or {}).items() if cid not in done}
    ids: list[str] = list((in_flight or {}).get("ids") or [])
    alone = bool((in_flight or {}).get("alone")) and len(ids) == 1
    for cid in ids:
        if cid not in done:
            entry = charged.setdefault(cid, [0, 0])
            entry[0] += 1
            entry[1] += int(alone)
    return charged


def poisoned(strikes: Strikes, limit: int) -> set[str]:
    """Requests whose worker died under them, running alone, `limit` times."""
    return {cid for cid, (_, alone) in strikes.items() if alone >= limit}


def poison_message(deaths_alone: int) -> str:
    return (f"This request was not completed: the worker process died while running it, "
            f"alone, {deaths_alone} times (it crashes the engine), so it was not retried "
            f"again. The batch's other requests were not affected.")


def deaths_of(strikes: Strikes, custom_id: str) -> int:
    entry = strikes.get(custom_id)
    return int(entry[0]) if entry else 0


def group_size(deaths: int, lanes: int) -> int:
    return max(1, lanes >> (3 * (deaths - 1)))


def isolation_groups(requests: Iterable[R], strikes: Strikes,
                     lanes: int) -> tuple[list[list[R]], list[R]]:
    """Split (custom_id, body) requests into suspect groups (run one group at a time, alone;
    most-suspected first) and the rest (run as usual, once-suspected first)."""
    suspects: list[R] = []
    rest: list[R] = []
    for request in requests:
        (suspects if deaths_of(strikes, request[0]) >= 2 else rest).append(request)
    rest.sort(key=lambda r: deaths_of(strikes, r[0]) == 0)  # stable: keeps their order
    suspects.sort(key=lambda r: -deaths_of(strikes, r[0]))
    groups: list[list[R]] = []
    for deaths, alike in itertools.groupby(suspects, key=lambda r: deaths_of(strikes, r[0])):
        same = list(alike)
        size = group_size(deaths, lanes)
        groups += [same[i:i + size] for i in range(0, len(same), size)]
    return groups, rest


def reservation(flying: Sequence[str], upcoming: Sequence[str], *,
                alone: bool = False) -> dict[str, Any]:
    """The `in_flight` record: what runs now and what may start before the next record."""
    return {"ids": [*flying, *upcoming], "alone": alone}
