"""The store contract for usage: a result part's usage is counted by the fenced write that
first records the part, once, whatever the retries of that write, and never for a write the
fence refuses; real-time usage adds to the same rows; reads sum by bucket and group. Each
case runs on every store (conftest.py)."""

from __future__ import annotations

from batchd.store.records import ChunkProgress, Part, UsageAdd, UsageQuery
from tests.contract.store_builders import (
    LEASE,
    NOW,
    Store,
    Stores,
    batch_record,
    plans,
    validating_batch,
)

MINUTE = int(NOW) // 60 * 60


def part(name: str, usage: dict[str, list[int]]) -> Part:
    return {"ok": f"batches/b/parts/{name}.ok.jsonl", "err": None, "n_ok": 1, "n_err": 0,
            "b_ok": 10, "usage": usage}


async def started(store: Store, *, chunks: int = 1, key_id: str = "key_a",
                  owner: str = "alice", endpoint: str = "/v1/chat/completions") -> str:
    record, lease = await validating_batch(store, batch_record(owner, key_id=key_id,
                                                               endpoint=endpoint))
    assert await store.start_batch(record.id, lease, plans=plans(chunks), total=chunks,
                                   model="m", tokens={}, token_limit=None, now=int(NOW))
    return record.id


async def totals(store: Store, **query: object) -> list[dict[str, object]]:
    fields: dict[str, object] = dict(kind="completions", start=MINUTE - 3600,
                                     end=MINUTE + 3600, width=7200)
    return await store.read_usage(UsageQuery(**fields | query))  # type: ignore[arg-type]


async def test_a_part_counts_once_by_the_write_that_records_it(stores: Stores) -> None:
    store = await stores()
    await started(store)
    claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    chunk, lease = claim
    first = part("p1", {"m": [2, 10, 4, 6]})
    progress = ChunkProgress(n_ok=2, input_tokens=10, output_tokens=6, cached_tokens=4)
    for _ in range(2):  # the same write again (a retry after a lost answer): no more usage
        assert await store.checkpoint_chunk(chunk, lease, parts=[first], committed=progress,
                                            now=NOW, lease_seconds=LEASE)
    second = part("p2", {"m": [1, 5, 0, 3], "other": [1, 1, 0, 1]})
    assert await store.commit_chunk(chunk, lease, parts=[first, second], now=int(NOW) + 1,
                                    committed=ChunkProgress(n_ok=4))
    assert await totals(store, group_by=("owner", "key_id", "model", "batch")) == [
        {"start": MINUTE - 3600, "owner": "alice", "key_id": "key_a", "model": "m",
         "batch": 1, "requests": 3, "input_tokens": 15, "cached_tokens": 4,
         "output_tokens": 9},
        {"start": MINUTE - 3600, "owner": "alice", "key_id": "key_a", "model": "other",
         "batch": 1, "requests": 1, "input_tokens": 1, "cached_tokens": 0,
         "output_tokens": 1}]


async def test_a_refused_write_counts_nothing_and_the_next_run_counts_only_its_own(
    stores: Stores,
) -> None:
    store = await stores()
    await started(store)
    claim = await store.claim_chunk(worker="w1", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    chunk, old = claim
    kept = part("kept", {"m": [1, 10, 0, 10]})
    assert await store.checkpoint_chunk(chunk, old, parts=[kept], now=NOW,
                                        committed=ChunkProgress(n_ok=1), lease_seconds=LEASE)
    # The lease lapses; another worker takes the chunk over from its last checkpoint.
    retaken = await store.claim_chunk(worker="w2", now=NOW + LEASE + 1, lease_seconds=LEASE)
    assert retaken is not None
    chunk2, new = retaken
    assert chunk2.parts == [kept]
    late = part("late", {"m": [1, 100, 0, 100]})  # the first worker's, written too late
    assert not await store.checkpoint_chunk(chunk, old, parts=[kept, late], now=NOW + 40,
                                            committed=ChunkProgress(n_ok=2),
                                            lease_seconds=LEASE)
    assert not await store.commit_chunk(chunk, old, parts=[kept, late], now=int(NOW) + 40,
                                        committed=ChunkProgress(n_ok=2))
    own = part("own", {"m": [1, 7, 0, 7]})
    assert await store.commit_chunk(chunk2, new, parts=[kept, own], now=int(NOW) + 41,
                                    committed=ChunkProgress(n_ok=2))
    [row] = await totals(store)
    assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (2, 17, 17)


async def test_real_time_and_batch_usage_share_rows_and_buckets(stores: Stores) -> None:
    store = await stores()
    await started(store, endpoint="/v1/embeddings", owner="bob", key_id="key_b")
    claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    assert await store.commit_chunk(*claim, parts=[part("e", {"m": [1, 8, 0, 0]})],
                                    now=int(NOW), committed=ChunkProgress(n_ok=1))
    adds = [UsageAdd(minute=MINUTE + 60 * n, owner=owner, key_id="key_r", model="m",
                     kind="completions", batch=False, requests=1, input_tokens=5,
                     output_tokens=2)
            for n, owner in enumerate(["alice", "alice", "bob"])]
    for add in adds:
        await store.record_usage([add])
    await store.record_usage([adds[0]])  # adds to its row
    await store.record_usage([adds[2], adds[2]])  # one write adding twice to one row
    per_minute = await totals(store, start=MINUTE, end=MINUTE + 180, width=60)
    assert [(r["start"], r["requests"], r["input_tokens"]) for r in per_minute] == [
        (MINUTE, 2, 10), (MINUTE + 60, 1, 5), (MINUTE + 120, 3, 15)]
    assert [(r["owner"], r["requests"]) for r in await totals(store, group_by=("owner",))] \
        == [("alice", 3), ("bob", 3)]
    assert [r["requests"] for r in await totals(store, owner="bob")] == [3]
    assert await totals(store, models=("nope",)) == []
    assert [r["requests"] for r in await totals(store, batch=False)] == [6]
    [embedded] = await totals(store, kind="embeddings", group_by=("batch", "key_id"))
    assert (embedded["batch"], embedded["key_id"], embedded["input_tokens"]) == (1, "key_b", 8)
