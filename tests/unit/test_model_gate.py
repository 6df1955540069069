"""The per-model gate (FIFO places whose number follows the engine, safe under cancels) and
the per-model breaker."""

from __future__ import annotations

import asyncio

import pytest

from batchd.engines.registry import ModelRegistry, ModelsFile
from batchd.worker.capacity import Breaker, Capacity, ModelGate


async def test_places_follow_the_engine_and_waiters_go_in_order() -> None:
    size = 1
    gate = ModelGate(lambda: size)
    await gate.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await gate.acquire()
        order.append(name)

    first, second = asyncio.create_task(wait("a")), asyncio.create_task(wait("b"))
    await asyncio.sleep(0)
    assert order == [] and gate.idle == 0
    size = 3  # the engine can take more now: the next release lets both in
    gate.release()
    await asyncio.gather(first, second)
    assert order == ["a", "b"] and gate.in_flight == 2


async def test_a_waiter_cancelled_as_a_place_frees_neither_leaks_nor_breaks() -> None:
    gate = ModelGate(lambda: 1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled, and before it runs again, the place frees
    gate.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_flight == 0
    await gate.acquire()  # the place is still there for the next one
    assert gate.in_flight == 1


async def test_room_nobody_waits_for_cues_one_claim_until_the_gate_fills_or_is_rearmed(
) -> None:
    """The worker claims another chunk when its model's engine has room that no request of
    its chunks waits for (their tail, or a grown limit), once per cue: a worker with nothing
    left to claim does not ask the store at every answer."""
    cues: list[int] = []
    gate = ModelGate(lambda: 2, on_idle=lambda: cues.append(gate.in_flight))
    await gate.acquire()
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())  # full: a request waits
    await asyncio.sleep(0)
    gate.release()  # its place goes to the waiter: no room nobody waits for
    await waiter
    assert cues == []
    gate.release()  # room, and nobody waits
    gate.release()  # still room: cued already
    assert cues == [1]
    gate.rearm()  # a chunk was claimed: its requests may leave room again
    await gate.acquire()
    gate.release()
    assert cues == [1, 0]


def test_a_breaker_backs_off_longer_each_time_and_ignores_late_answers() -> None:
    breaker = Breaker()
    assert breaker.trip(now=0.0) == 2.0 and not breaker.allows(1.0)
    breaker.succeeded(now=1.0)  # an answer to a request sent before it opened
    assert breaker.trip(now=2.5) == 4.0  # still down: twice as long
    breaker.succeeded(now=7.0)  # a success once it let work through again closes it
    assert breaker.trip(now=8.0) == 2.0


async def test_a_model_claims_more_chunks_while_its_engine_has_idle_places() -> None:
    registry = ModelRegistry(ModelsFile.model_validate({"models": [
        {"id": "m", "engine": "instant", "concurrency": 4, "aliases": ["m-alias"]}]}))
    await registry.start()
    capacity = Capacity(registry, cap=None, chunks=2, chunk_lines=256)
    assert capacity.names["m"] == ["m", "m-alias"]
    capacity.models["m"].chunks = 2  # its usual share, but 4 places idle: room for more
    room, crowded = capacity.claimable()
    assert "m" in room
    for _ in range(4):
        await capacity.gate("m").acquire()
    room, crowded = capacity.claimable()  # engine full: only a new owner's chunk
    assert "m" not in room and "m" in crowded
    capacity.models["m"].chunks = 16
    room, crowded = capacity.claimable()  # 8x the usual share: nothing more at all
    assert "m" not in room and "m" not in crowded
    capacity.models["m"].chunks = 0
    capacity.unreachable("m")  # its breaker is open: no claims, whatever the room
    room, crowded = capacity.claimable()
    assert "m" not in room and "m" not in crowded
    await registry.aclose()


async def test_a_model_that_takes_thousands_at_once_may_hold_the_chunks_that_fill_it() -> None:
    # As a fleet of GPU servers: 4,096 places take sixteen chunks of 256 requests at once
    # (eight chunks, four times the usual share, once capped it at 2,048).
    registry = ModelRegistry(ModelsFile.model_validate({"models": [
        {"id": "m", "engine": "instant", "concurrency": 4096}]}))
    await registry.start()
    capacity = Capacity(registry, cap=None, chunks=2, chunk_lines=256)
    assert capacity.most_while_idle("m") == 32  # twice the chunks that fill it
    capacity.models["m"].chunks = 16
    room, _ = capacity.claimable()
    assert "m" in room
    capacity.models["m"].chunks = 32
    room, crowded = capacity.claimable()
    assert "m" not in room and "m" in crowded  # only a new owner's chunk
    capacity.models["m"].chunks = 64
    room, crowded = capacity.claimable()
    assert "m" not in room and "m" not in crowded
    # Capped by BATCHD_WORKER_CONCURRENCY, it needs no more than the usual four times.
    assert Capacity(registry, cap=512, chunks=2, chunk_lines=256).most_while_idle("m") == 8
    await registry.aclose()
