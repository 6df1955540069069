"""The worker's isolation door: going alone waits for those inside to leave, keeps newcomers
out until done, and opens again however it ends."""

from __future__ import annotations

import asyncio

import pytest

from batchd.worker.gate import RequestGate


async def test_alone_waits_for_those_inside_and_keeps_newcomers_out() -> None:
    gate = RequestGate()
    gate.enter()
    gate.enter()
    order: list[str] = []

    async def suspect() -> None:
        async with gate.alone():
            order.append("alone")
            assert not gate.is_open
            await asyncio.sleep(0)
        order.append("reopened")

    async def newcomer() -> None:
        await gate.wait_open()
        gate.enter()
        order.append("newcomer")
        gate.leave()

    alone = asyncio.create_task(suspect())
    await asyncio.sleep(0)
    assert not gate.is_open and order == []
    late = asyncio.create_task(newcomer())
    gate.leave()
    await asyncio.sleep(0)
    assert order == []  # one is still inside
    gate.leave()
    await asyncio.gather(alone, late)
    assert order == ["alone", "reopened", "newcomer"] and gate.is_open


async def test_a_cancelled_wait_to_go_alone_opens_the_door_again() -> None:
    gate = RequestGate()
    gate.enter()

    async def suspect() -> None:
        async with gate.alone():
            raise AssertionError("never alone: someone stays inside")

    alone = asyncio.create_task(suspect())
    await asyncio.sleep(0)
    assert not gate.is_open
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    assert gate.is_open
    gate.leave()  # the last to leave with nobody waiting: nothing to wake
    async with gate.alone():
        assert not gate.is_open
    assert gate.is_open
