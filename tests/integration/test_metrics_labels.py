"""Every label value of /metrics comes from a closed set: nothing a client sends (a method, a
path, a model name) becomes a series of its own, so /metrics cannot be grown from outside."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchd import metrics
from tests.support.harness import Harness


def label_values(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                found.setdefault(name, set()).add(value)
    return found


async def test_client_chosen_methods_paths_and_models_are_not_label_values(
    harness: Harness,
) -> None:
    earlier = (await harness.client.get("/metrics")).text
    before = len(earlier)
    # Series of the models earlier tests' apps served stay in this process's registry.
    served_earlier = label_values(earlier).get("model", set())
    sent: list[str] = []
    for i in range(30):
        method, path, batch_id = ((f"M{i}{uuid.uuid4().hex}" * 8).upper(),  # a new method
                                  uuid.uuid4().hex, f"batch_{uuid.uuid4().hex}")
        sent += [method, path, batch_id]
        await harness.client.request(method, "/v1/batches")
        await harness.client.request(method, f"/nowhere/{path}")
        await harness.client.get(f"/v1/batches/{batch_id}")
    # A model no models file serves (a line read by a worker with another models file).
    model = f"made-up-{uuid.uuid4().hex}"
    tally = metrics.Finished()
    tally.add(model, ok=True, prompt=1, cached=0, completion=1)
    tally.flush()
    text = (await harness.client.get("/metrics")).text
    assert not [value for value in [*sent, model] if value in text]
    labels = label_values(text)
    assert labels["method"] <= metrics.METHODS | {"other"}
    assert "other" in labels["method"]
    assert {"/v1/batches", "/v1/batches/{batch_id}", "unmatched"} <= labels["route"]
    assert all(s == "other" or (s.isdigit() and 100 <= int(s) <= 599) for s in labels["status"])
    assert labels["model"] <= {"instant-model", "slow-model", "embed-model", "both-model", "*",
                               "other"} | served_earlier
    assert labels["status"] >= {"404"}
    # 90 requests with distinct 256-byte methods and paths add a handful of series at most.
    assert len(text) - before < 20_000


def test_store_wide_gauges_name_only_served_models_and_known_statuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics.CALLBACKS, "busy",
                        lambda: {"a": (1, 2), "gone-1": (0, 1), "gone-2": (1, 3)})
    metrics.serve_models(["a"])
    saved = metrics.CALLBACKS.snapshot
    metrics.CALLBACKS.snapshot = {"pending": {"a": 1, "gone-1": 3, "gone-2": 4, "*": 1},
                                  "queued": {"a": 1, "gone-1": 2},
                                  "batches": {"completed": 2, "odd": 1, "odder": 2}}
    try:
        families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples}
                    for f in metrics.CALLBACKS.collect()}
    finally:
        metrics.CALLBACKS.snapshot = saved
        metrics.serve_models([])
    assert families["batchd_backlog_requests"] == {("a",): 1, ("other",): 7, ("*",): 1}
    assert families["batchd_pending_requests"] == families["batchd_backlog_requests"]
    assert families["batchd_queued_requests"] == {("a",): 1, ("other",): 2}
    assert families["batchd_batches"] == {("completed",): 2, ("other",): 3}
    assert families["batchd_engine_slots"] == {("a",): 2, ("other",): 4}
    assert families["batchd_engine_busy_slots"] == {("a",): 1, ("other",): 1}


def test_label_helpers_map_the_unknown_to_other() -> None:
    assert metrics.method_label("GET") == "GET"
    assert metrics.method_label("get") == "other"  # methods are case-sensitive
    assert metrics.status_label(404) == "404" and metrics.status_label(1000) == "other"
    metrics.serve_models(["a"])
    try:
        assert metrics.model_label("a") == "a"
        assert metrics.model_label("b") == "other" and metrics.model_label(None) == "other"
    finally:
        metrics.serve_models([])
