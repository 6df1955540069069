"""Worker deaths are charged to the requests that were in flight, never to a whole chunk, and
only a death with evidence against a request can get it failed.

Before a run starts requests it records their custom_ids on the chunk (`in_flight`, tagged
with the worker process's life, see crashes.py); a clean end clears the record. So when a chunk
is claimed with the record still set, its last worker died while those requests were in
flight, and each of them that has no saved result gets a strike.

Deaths are not all alike. A crash inside the engine leaves a trace: the fatal signal
(SIGSEGV, SIGABRT, …) that `faulthandler` writes to the dead life's crash file, which the
next life on that host records on the chunks it had in flight (the record's `crash`), or the
exception a request's run raised. A `kill -9`, the OOM killer, a lost host or a lapsed lease
leave none, and they strike whatever happens to run: an operator's kill during one request
says nothing about it. So:

- every death is a strike, and decides the order: a once-suspected request runs again first;
  one in flight at two or more deaths is re-run in shrinking groups with nothing else of the
  worker beside it, `lanes // 8 ** (deaths - 1)` at a time (4 then 1 for 32 lanes), so each
  death narrows the suspects. Groups with a crash among their strikes run before the rest of
  the chunk (to find the culprit fast); groups struck only by deaths without a trace run
  after it (most likely innocent; and a request that kills its worker without a trace holds
  up nothing else of its chunk);
- only a crash with a trace while the request ran alone counts toward the verdict: after
  `limit` of them (`BATCHD_MAX_ATTEMPTS`) it is failed, alone, with a `request_failed` line
  that says why. Deaths without a trace are retried until the batch's deadline, however many.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from typing import Any, TypeVar

Strikes = dict[str, list[int]]
"""custom_id → [deaths it was in flight for, of which it ran alone, crashes with a trace
(a fatal signal or an exception in its run) it was in flight for, of which it ran alone].
Records written before crashes were told apart hold only the first two: read as no crash."""

DEATHS, DEATHS_ALONE, CRASHES, CRASHES_ALONE = range(4)

R = TypeVar("R", bound=tuple[str, Any])  # a request: (custom_id, body)


def _entry(counts: Sequence[int]) -> list[int]:
    return [*counts, 0, 0, 0, 0][:4]


def evidence(in_flight: dict[str, Any] | None) -> str | None:
    """What the death that left `in_flight` recorded died of, if it left a trace."""
    crash = (in_flight or {}).get("crash")
    return str(crash) if crash else None


def charge(strikes: Strikes | None, in_flight: dict[str, Any] | None,
           done: Collection[str]) -> Strikes:
    """The strikes after charging a death that left `in_flight` recorded. Requests with a
    saved result are forgiven: they finished, so the death came after them."""
    charged = {cid: _entry(n) for cid, n in (strikes or {}).items() if cid not in done}
    ids: list[str] = list((in_flight or {}).get("ids") or [])
    alone = bool((in_flight or {}).get("alone")) and len(ids) == 1
    crashed = evidence(in_flight) is not None
    for cid in ids:
        if cid not in done:
            entry = charged.setdefault(cid, [0, 0, 0, 0])
            entry[DEATHS] += 1
            entry[DEATHS_ALONE] += int(alone)
            entry[CRASHES] += int(crashed)
            entry[CRASHES_ALONE] += int(crashed and alone)
    return charged


def with_crash(in_flight: dict[str, Any], cause: str) -> dict[str, Any]:
    """The `in_flight` record of a run that crashed with a trace (`cause`: the signal, or
    "exception"): what the next run charges as a crash."""
    return {**in_flight, "crash": cause}


def poisoned(strikes: Strikes, limit: int) -> set[str]:
    """Requests whose worker crashed with a trace under them, running alone, `limit` times."""
    return {cid for cid, n in strikes.items() if _entry(n)[CRASHES_ALONE] >= limit}


def crashes_alone(strikes: Strikes, custom_id: str) -> int:
    return _entry(strikes.get(custom_id) or ())[CRASHES_ALONE]


def poison_message(crashes: int) -> str:
    return (f"This request was not completed: the worker process crashed while running it, "
            f"alone, {crashes} times (a fatal signal in the engine, or an error in its run), "
            f"so it was not retried again. The batch's other requests were not affected.")


def deaths_of(strikes: Strikes, custom_id: str) -> int:
    entry = strikes.get(custom_id)
    return int(entry[DEATHS]) if entry else 0


def crashes_of(strikes: Strikes, custom_id: str) -> int:
    return _entry(strikes.get(custom_id) or ())[CRASHES]


def group_size(deaths: int, lanes: int) -> int:
    return max(1, lanes >> (3 * (deaths - 1)))


def isolation_groups(requests: Iterable[R], strikes: Strikes,
                     lanes: int) -> tuple[list[list[R]], list[R], list[list[R]]]:
    """Split (custom_id, body) requests into suspect groups to run one at a time, alone,
    before the rest (struck by a crash with a trace; most-suspected first), the rest (run as
    usual, once-suspected first), and suspect groups to run alone after the rest (struck
    only by deaths without a trace)."""
    if not strikes:  # nobody was in flight at a death: all run as usual, in order
        return [], list(requests), []
    suspects: list[R] = []
    rest: list[R] = []
    for request in requests:
        (suspects if deaths_of(strikes, request[0]) >= 2 else rest).append(request)
    rest.sort(key=lambda r: deaths_of(strikes, r[0]) == 0)  # stable: keeps their order
    suspects.sort(key=lambda r: (-deaths_of(strikes, r[0]), crashes_of(strikes, r[0]) == 0))
    first: list[list[R]] = []
    last: list[list[R]] = []
    for (deaths, crashed), alike in itertools.groupby(
            suspects, key=lambda r: (deaths_of(strikes, r[0]), crashes_of(strikes, r[0]) > 0)):
        same = list(alike)
        size = group_size(deaths, lanes)
        (first if crashed else last).extend(same[i:i + size] for i in range(0, len(same), size))
    return first, rest, last


def reservation(flying: Sequence[str], upcoming: Sequence[str], *, alone: bool = False,
                life: str | None = None) -> dict[str, Any]:
    """The `in_flight` record: what runs now and what may start before the next record, and
    the worker process's life that runs it (what ties a crash file to the record)."""
    record: dict[str, Any] = {"ids": [*flying, *upcoming], "alone": alone}
    if life is not None:
        record["life"] = life
    return record
