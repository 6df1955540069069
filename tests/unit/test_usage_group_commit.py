"""Real-time usage in shared writes: each answer waits for its own usage to be durable, and
the answers that finish meanwhile share the next write."""

from __future__ import annotations

import asyncio

import pytest

from batchd.errors import ServiceUnavailable
from batchd.store.records import UsageAdd
from batchd.usage import GroupCommit

pytestmark = pytest.mark.backend_independent


def usage(n: int) -> UsageAdd:
    return UsageAdd(minute=0, owner="o", key_id="k", model="m", kind="completions",
                    batch=False, requests=1, input_tokens=n)


async def test_answers_that_finish_during_a_write_share_the_next() -> None:
    writes: list[list[int]] = []
    release = asyncio.Event()

    async def write(adds: list[UsageAdd]) -> None:
        writes.append([a.input_tokens for a in adds])
        await release.wait()

    group = GroupCommit(write)
    first = asyncio.create_task(group.add(usage(0)))
    await asyncio.sleep(0)  # its write is under way
    rest = [asyncio.create_task(group.add(usage(n))) for n in range(1, 20)]
    await asyncio.sleep(0)
    assert not first.done() and writes == [[0]]  # nobody returns before its write
    release.set()
    await asyncio.gather(first, *rest)
    assert writes == [[0], list(range(1, 20))]


async def test_a_failed_write_fails_each_answer_in_it_and_a_gone_caller_harms_none() -> None:
    fail = True

    async def write(adds: list[UsageAdd]) -> None:
        await asyncio.sleep(0)
        if fail:
            raise ServiceUnavailable("the database is unavailable")

    group = GroupCommit(write)
    gone = asyncio.create_task(group.add(usage(0)))
    waiting = asyncio.create_task(group.add(usage(1)))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(ServiceUnavailable):
        await waiting
    fail = False
    await group.add(usage(2))  # the next write goes on
