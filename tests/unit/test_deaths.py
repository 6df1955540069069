"""Charging worker deaths: every death is a strike and narrows the suspects, but only crashes
with a trace while a request ran alone can get it failed (issue 23: kills from outside that
happened to land while one request ran alone failed it)."""

from __future__ import annotations

from typing import Any

from batchd.worker import deaths
from batchd.worker.deaths import CRASHES, CRASHES_ALONE, DEATHS, DEATHS_ALONE


def _alone(cid: str, crash: str | None = None) -> dict[str, Any]:
    record = deaths.reservation([], [cid], alone=True, life="life-1")
    return deaths.with_crash(record, crash) if crash else record


def test_kills_without_a_trace_while_a_request_runs_alone_never_make_it_poison() -> None:
    strikes: deaths.Strikes = {}
    strikes = deaths.charge(strikes, deaths.reservation(["a", "b"], ["c"]), done=())
    for _ in range(10):
        strikes = deaths.charge(strikes, _alone("a"), done=())
    assert strikes["a"][DEATHS] == 11 and strikes["a"][DEATHS_ALONE] == 10
    assert strikes["a"][CRASHES] == strikes["a"][CRASHES_ALONE] == 0
    assert deaths.poisoned(strikes, limit=2) == set()


def test_crashes_with_a_trace_while_alone_count_toward_the_limit() -> None:
    strikes = deaths.charge({}, _alone("a", "SIGSEGV"), done=())
    assert deaths.poisoned(strikes, limit=2) == set()
    strikes = deaths.charge(strikes, _alone("a"), done=())  # a kill between: not counted
    assert deaths.poisoned(strikes, limit=2) == set()
    strikes = deaths.charge(strikes, _alone("a", "SIGABRT"), done=())
    assert deaths.poisoned(strikes, limit=2) == {"a"}
    assert deaths.crashes_alone(strikes, "a") == 2
    assert "crashed while running it, alone, 2 times" in deaths.poison_message(2)


def test_a_crash_beside_other_requests_strikes_them_all_but_alone_none() -> None:
    record = deaths.with_crash(deaths.reservation(["a"], ["b", "c"], life="l"), "SIGSEGV")
    strikes = deaths.charge({}, record, done={"c"})
    assert strikes == {"a": [1, 0, 1, 0], "b": [1, 0, 1, 0]}
    # "alone" needs one id: a record of two that says alone is a group, not a verdict.
    group = deaths.with_crash(deaths.reservation([], ["a", "b"], alone=True), "SIGSEGV")
    strikes = deaths.charge(strikes, group, done=())
    assert deaths.crashes_alone(strikes, "a") == 0


def test_a_finished_request_is_forgiven_its_strikes() -> None:
    strikes = deaths.charge({}, _alone("a", "SIGSEGV"), done=())
    assert deaths.charge(strikes, deaths.reservation(["b"], []), done={"a"}) == {
        "b": [1, 0, 0, 0]}


def test_strikes_recorded_before_crashes_were_told_apart_count_as_no_crash() -> None:
    old = {"a": [5, 4]}  # [deaths, deaths_alone]: the old rule would have failed it
    assert deaths.poisoned(old, limit=2) == set()
    strikes = deaths.charge(old, _alone("a", "SIGSEGV"), done=())
    assert strikes["a"] == [6, 5, 1, 1]


def test_crash_suspects_run_first_and_suspects_without_a_trace_after_the_rest() -> None:
    strikes: deaths.Strikes = {
        "crashed": [2, 0, 1, 0], "killed": [2, 0, 0, 0], "killed-more": [3, 1, 0, 0],
        "once": [1, 0, 0, 0],
    }
    requests = [(cid, {}) for cid in ("fresh", "killed", "once", "crashed", "killed-more")]
    first, rest, last = deaths.isolation_groups(requests, strikes, lanes=8)
    assert [[cid for cid, _ in g] for g in first] == [["crashed"]]
    assert [cid for cid, _ in rest] == ["once", "fresh"]  # once-suspected first
    assert [[cid for cid, _ in g] for g in last] == [["killed-more"], ["killed"]]


def test_groups_shrink_with_each_death() -> None:
    strikes = {f"r{i}": [2, 0, 1, 0] for i in range(10)}
    first, rest, last = deaths.isolation_groups(
        [(f"r{i}", {}) for i in range(10)], strikes, lanes=32)
    assert [len(g) for g in first] == [4, 4, 2] and rest == [] and last == []


def test_a_record_says_which_life_wrote_it_and_what_it_died_of() -> None:
    record = deaths.reservation(["a"], ["b"], life="life-x")
    assert record == {"ids": ["a", "b"], "alone": False, "life": "life-x"}
    assert deaths.evidence(record) is None
    assert deaths.evidence(deaths.with_crash(record, "SIGBUS")) == "SIGBUS"
    assert deaths.evidence(None) is None
    assert CRASHES == 2 and CRASHES_ALONE == 3
