"""The store contract for the verbs the API's services call (`ApiStore`): keys, files,
batches, webhook endpoints and deliveries, and uploads; above all that each owner sees only
its own. Each case runs on every store (conftest.py)."""

from __future__ import annotations

import pytest

from batchd.limits.errors import TooManyTestEvents
from batchd.store.records import (
    ApiKey,
    BatchStatus,
    ChunkProgress,
    StopReason,
    WebhookEndpoint,
)
from tests.contract.store_builders import (
    LEASE,
    NOW,
    Stores,
    batch_record,
    endpoint,
    file_record,
    running_batch,
    upload_part,
    upload_record,
    validating_batch,
)


async def test_a_key_is_found_by_its_hash_and_revoked_once(stores: Stores) -> None:
    store = await stores()
    keys = [ApiKey(id=f"key_{n}", name=f"k{n}", owner="alice", role="user", prefix="sk-x",
                   created_at=int(NOW) - n, revoked_at=None) for n in range(3)]
    for n, key in enumerate(keys):
        await store.insert_key(key, key_hash=f"hash-{n}")
    assert await store.find_key("hash-1") == keys[1]
    assert await store.find_key("no-such-hash") is None
    assert [k.id for k in await store.list_keys()] == ["key_2", "key_1", "key_0"]
    revoked = await store.revoke_key("key_1", now=int(NOW))
    assert revoked is not None and revoked.revoked_at == int(NOW)
    assert await store.revoke_key("key_1", now=int(NOW) + 1) is None
    found = await store.find_key("hash-1")
    assert found is not None and found.revoked_at == int(NOW)


async def test_an_owner_sees_reads_and_deletes_only_its_own_files(stores: Stores) -> None:
    store = await stores()
    mine = await store.insert_file(file_record("alice"))
    theirs = await store.insert_file(file_record("bob", purpose="batch_output"))
    assert await store.get_file(theirs.id, owner="alice") is None
    assert await store.get_file(theirs.id, owner=None) == theirs  # workers and admins
    assert await store.delete_file(theirs.id, owner="alice", now=int(NOW)) is None
    listed, more = await store.list_files(owner="alice", purpose=None, limit=10,
                                          ascending=True, after=None)
    assert listed == [mine] and not more
    everyone, _ = await store.list_files(owner=None, purpose="batch_output", limit=10,
                                         ascending=True, after=None)
    assert everyone == [theirs]
    # A cursor naming another owner's file gives nothing away.
    assert await store.list_files(owner="alice", purpose=None, limit=10, ascending=True,
                                  after=theirs.id) == ([], False)
    deleted = await store.delete_file(mine.id, owner="alice", now=int(NOW))
    assert deleted is not None and deleted.deleted_at == int(NOW)
    assert await store.get_file(mine.id, owner="alice") is None
    assert await store.delete_file(mine.id, owner="alice", now=int(NOW)) is None


async def test_a_deleted_file_is_purged_only_once_no_running_batch_reads_it(
    stores: Stores,
) -> None:
    store = await stores()
    read = await store.insert_file(file_record())
    unread = await store.insert_file(file_record())
    record, lease = await validating_batch(store, batch_record(input_file_id=read.id))
    for f in (read, unread):
        await store.delete_file(f.id, owner=None, now=int(NOW))
    assert [f.id for f in await store.deleted_files_unused()] == [unread.id]
    await store.forget_file(unread.id)
    assert await store.deleted_files_unused() == []
    assert await store.fail_batch(record.id, lease, errors=[], now=int(NOW))
    assert [f.id for f in await store.deleted_files_unused()] == [read.id]


async def test_files_past_their_expiry_are_deleted(stores: Stores) -> None:
    store = await stores()
    soon = await store.insert_file(file_record(expires_at=int(NOW) + 10))
    late = await store.insert_file(file_record(expires_at=int(NOW) + 20))
    forever = await store.insert_file(file_record())
    assert await store.expire_files(now=int(NOW) + 10) == 1
    assert await store.expire_files(now=int(NOW) + 10) == 0
    live, _ = await store.list_files(owner=None, purpose=None, limit=10, ascending=False,
                                     after=None)
    assert [f.id for f in live] == [forever.id, late.id]
    assert await store.get_file(soon.id, owner=None) is None


async def test_batches_page_newest_first_within_their_owner(stores: Stores) -> None:
    store = await stores()
    alices = [await store.insert_batch(batch_record("alice")) for _ in range(5)]
    bobs = await store.insert_batch(batch_record("bob"))
    first, more = await store.list_batches(owner="alice", after=None, limit=3)
    assert [b.id for b in first] == [b.id for b in alices[:1:-1]] and more
    rest, more = await store.list_batches(owner="alice", after=first[-1].id, limit=3)
    assert [b.id for b in rest] == [alices[1].id, alices[0].id] and not more
    assert await store.list_batches(owner="alice", after=bobs.id, limit=3) == ([], False)
    everyone, _ = await store.list_batches(owner=None, after=None, limit=10)
    assert everyone[0].id == bobs.id and len(everyone) == 6
    assert await store.get_batch(bobs.id, owner="alice") is None
    assert await store.get_batch(bobs.id, owner="bob") == bobs


async def test_an_owner_can_cancel_only_its_own_unfinished_batches(stores: Stores) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=1, owner="alice")
    assert await store.request_cancel(batch_id, owner="bob", now=int(NOW)) is None
    cancelled = await store.request_cancel(batch_id, owner="alice", now=int(NOW) + 1)
    assert cancelled is not None and cancelled.status is BatchStatus.CANCELLING
    assert cancelled.cancelling_at == int(NOW) + 1
    assert cancelled.stop_reason is StopReason.CANCELLED
    again = await store.request_cancel(batch_id, owner="alice", now=int(NOW) + 2)
    assert again is not None and again.cancelling_at == int(NOW) + 1  # unchanged


async def test_progress_and_the_queue_count_what_is_running(stores: Stores) -> None:
    store = await stores()
    batch_id = await running_batch(store, chunks=3, model="m")
    unstarted = await store.insert_batch(batch_record())
    claim = await store.claim_chunk(worker="w", now=NOW, lease_seconds=LEASE)
    assert claim is not None
    live = ChunkProgress(n_ok=1, n_err=1, input_tokens=5, output_tokens=6, cached_tokens=1)
    assert await store.heartbeat_chunk(claim[0], claim[1], progress=live, now=NOW,
                                       lease_seconds=LEASE)
    assert await store.live_progress([batch_id, "batch_none"]) == {batch_id: live}
    assert await store.live_progress([]) == {}
    # What a poll reads, in one: the batch and the same sums, for its owner alone.
    record = await store.get_batch(batch_id, owner=None)
    assert await store.get_batch_progress(batch_id, owner=None) == (record, live)
    assert record is not None and record.owner != "mallory"
    assert await store.get_batch_progress(batch_id, owner=record.owner) == (record, live)
    assert await store.get_batch_progress(batch_id, owner="mallory") is None
    assert await store.get_batch_progress("batch_none", owner=None) is None
    # Not yet validated: no chunks, nothing live.
    assert await store.get_batch_progress(unstarted.id, owner=None) == (unstarted, None)
    # The backlog counts the claimed chunk's unfinished line (queued or running); the queue
    # only the two no worker took.
    assert await store.queue_snapshot() == {
        "batches": {"in_progress": 1, "validating": 1}, "pending": {"m": 3},
        "queued": {"m": 2}}
    assert await store.commit_chunk(claim[0], claim[1], parts=[], now=int(NOW),
                                    committed=ChunkProgress(n_ok=1))
    snapshot = await store.queue_snapshot()
    assert snapshot["pending"] == {"m": 2} and snapshot["queued"] == {"m": 2}


async def test_an_owner_has_at_most_so_many_endpoints_and_sees_only_its_own(
    stores: Stores,
) -> None:
    store = await stores()
    first, second = endpoint("alice"), endpoint("alice", created_at=int(NOW) + 1)
    assert await store.insert_endpoint(first, max_per_owner=2)
    assert await store.insert_endpoint(second, max_per_owner=2)
    assert not await store.insert_endpoint(endpoint("alice"), max_per_owner=2)
    assert await store.insert_endpoint(endpoint("bob"), max_per_owner=2)
    assert [e.id for e in await store.list_endpoints(owner="alice")] == [first.id, second.id]
    assert len(await store.list_endpoints(owner=None)) == 3
    assert await store.get_endpoint(first.id, owner="bob") is None
    assert await store.update_endpoint(first.id, owner="bob", url="https://evil/") is None
    changed = await store.update_endpoint(first.id, owner="alice", url="https://hooks/y",
                                          events=["batch.failed"])
    assert changed is not None and (changed.url, changed.events) == (
        "https://hooks/y", ["batch.failed"])
    assert await store.update_endpoint(second.id, owner=None, deleted_at=int(NOW))
    assert await store.get_endpoint(second.id, owner="alice") is None
    # A deleted endpoint frees its place.
    assert await store.insert_endpoint(endpoint("alice"), max_per_owner=2)


async def test_test_events_are_limited_per_endpoint_and_per_owner(stores: Stores) -> None:
    store = await stores()
    hooks = [endpoint("alice") for _ in range(3)]
    for hook in hooks:
        assert await store.insert_endpoint(hook, max_per_owner=5)
    now = int(NOW)
    for at in (now, now + 10):
        assert await store.record_test_event(hooks[0], now=at, per_endpoint=2, per_owner=3)
    with pytest.raises(TooManyTestEvents) as over:
        await store.record_test_event(hooks[0], now=now + 20, per_endpoint=2, per_owner=3)
    assert (over.value.scope, over.value.retry_after) == ("endpoint", 40)
    assert await store.record_test_event(hooks[1], now=now + 20, per_endpoint=2, per_owner=3)
    with pytest.raises(TooManyTestEvents) as over:
        await store.record_test_event(hooks[2], now=now + 30, per_endpoint=2, per_owner=3)
    assert (over.value.scope, over.value.retry_after) == ("owner", 30)
    # A minute on, the first event no longer counts.
    assert await store.record_test_event(hooks[2], now=now + 61, per_endpoint=2, per_owner=3)
    deliveries = await store.list_deliveries(hooks[0].id, limit=10)
    assert [(e.type, e.data) for _, e in deliveries] == [
        ("webhook.test", {"id": hooks[0].id, "object": "webhook_endpoint"})] * 2


async def test_deliveries_are_shared_fairly_and_fenced_by_their_lease(stores: Stores) -> None:
    store = await stores()
    hooks = {owner: endpoint(owner, events=("batch.failed",)) for owner in ("alice", "bob")}
    for hook in hooks.values():
        assert await store.insert_endpoint(hook, max_per_owner=5)
    for owner, count, at in (("alice", 4, NOW - 1), ("bob", 2, NOW)):
        for _ in range(count):
            record, lease = await validating_batch(store, batch_record(owner))
            assert await store.fail_batch(record.id, lease, errors=[], now=int(at))

    def owners(claims: list[tuple[object, object, WebhookEndpoint]]) -> list[str]:
        return sorted(to.owner for _, _, to in claims)

    # Round-robin by owner: with room for two, one each, though alice's four are older.
    claimed = await store.claim_deliveries(now=NOW, lease_seconds=LEASE, limit=2,
                                           per_owner=5, per_endpoint=5)
    assert owners(claimed) == ["alice", "bob"]
    # At most `per_endpoint`, and `per_owner`, in flight at once (leased by anyone).
    assert await store.claim_deliveries(now=NOW, lease_seconds=LEASE, limit=10,
                                        per_owner=5, per_endpoint=1) == []
    more = await store.claim_deliveries(now=NOW, lease_seconds=LEASE, limit=10,
                                        per_owner=2, per_endpoint=5)
    assert owners(more) == ["alice", "bob"]
    assert await store.claim_deliveries(now=NOW, lease_seconds=LEASE, limit=10,
                                        per_owner=2, per_endpoint=5) == []
    [delivery] = [d for d, _, to in claimed if to.owner == "alice"]
    assert await store.finish_attempt(
        delivery, attempt={"at": int(NOW), "status": 500}, next_attempt_at=NOW + 60,
        delivered=False, disable_reason=None, now=int(NOW))
    # Its lease is gone: a second outcome for the same attempt does not land.
    assert not await store.finish_attempt(
        delivery, attempt={"at": int(NOW), "status": 200}, next_attempt_at=None,
        delivered=True, disable_reason=None, now=int(NOW))
    [(retried, _)] = [d for d in await store.list_deliveries(hooks["alice"].id, limit=10)
                      if d[0].id == delivery.id]
    assert (retried.state, retried.attempts, retried.next_attempt_at) == (
        "pending", 1, NOW + 60)
    assert retried.history == [{"at": int(NOW), "status": 500}] and retried.lease_until is None
    # Lapsed leases let another sender take the rest; the retried one is due only later.
    every = {d.id for hook in hooks.values()
             for d, _ in await store.list_deliveries(hook.id, limit=10)}
    later = await store.claim_deliveries(now=NOW + LEASE + 1, lease_seconds=LEASE, limit=10,
                                         per_owner=10, per_endpoint=10)
    assert {d.id for d, _, _ in later} == every - {delivery.id}
    # Failing for good disables the endpoint, whose deliveries then wait.
    alices = next(d for d, _, to in later if to.owner == "alice")
    assert await store.finish_attempt(alices, attempt={"at": int(NOW), "status": 410},
                                      next_attempt_at=None, delivered=False,
                                      disable_reason="gone", now=int(NOW) + 40)
    disabled = await store.get_endpoint(hooks["alice"].id, owner="alice")
    assert disabled is not None and (disabled.disabled_at, disabled.disabled_reason) == (
        int(NOW) + 40, "gone")
    waiting = await store.claim_deliveries(now=NOW + 200, lease_seconds=LEASE, limit=10,
                                           per_owner=10, per_endpoint=10)
    assert [to.owner for _, _, to in waiting] == ["bob", "bob"]


async def test_a_completed_upload_becomes_its_file_and_an_ended_one_its_parts_go(
    stores: Stores,
) -> None:
    store = await stores()
    upload = upload_record("alice", size=3)
    await store.insert_upload(upload)
    assert await store.get_upload(upload.id, owner="bob") is None
    parts = [upload_part(upload, 1), upload_part(upload, 2)]
    for part in parts:
        assert await store.add_part(part)
    assert await store.list_parts(upload.id) == sorted(parts, key=lambda p: p.id)
    assert await store.claim_upload(upload.id, now=int(NOW))
    assert not await store.claim_upload(upload.id, now=int(NOW))
    made = file_record("alice", bytes=3)
    assert await store.complete_upload(upload.id, made)
    assert not await store.complete_upload(upload.id, file_record("alice"))
    done = await store.get_upload(upload.id, owner="alice")
    assert done is not None and (done.status, done.file_id) == ("completed", made.id)
    assert await store.get_file(made.id, owner="alice") is not None
    ended = upload_record("alice")
    await store.insert_upload(ended)
    assert await store.add_part(upload_part(ended, 4))
    assert await store.end_uploads([ended.id, ended.id, upload.id], status="cancelled") == [
        ended.id]
    await store.forget_parts(ended.id)
    assert await store.list_parts(ended.id) == [] and await store.part_totals(ended.id) == (0, 0)


async def test_uploads_expire_and_so_do_abandoned_completions(stores: Stores) -> None:
    store = await stores()
    idle, claimed = upload_record(), upload_record()
    for upload in (idle, claimed):
        await store.insert_upload(upload)
    assert await store.claim_upload(claimed.id, now=int(NOW))
    hour = int(NOW) + 3600
    # Past the hour, the idle one expires; the claim only once it counts as abandoned.
    assert await store.expire_uploads(now=hour, abandoned_before=int(NOW)) == [idle.id]
    assert await store.expire_uploads(now=hour, abandoned_before=hour) == [claimed.id]
    assert not await store.claim_upload(idle.id, now=int(NOW))
    assert not await store.add_part(upload_part(idle, 1))
    gone = await store.get_upload(claimed.id, owner=None)
    assert gone is not None and gone.status == "expired"
