"""Reading lines in bounded pieces, and the byte budget reads are held within: however long a
line is, a reader holds one piece and `cap` bytes of it."""

from __future__ import annotations

import pytest

from batchd.errors import ServiceUnavailable, TooManyRequests
from batchd.line_reader import LineReader
from batchd.read_budget import ByteBudget


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_a_long_line_is_cut_to_the_cap_and_never_held_whole() -> None:
    data = b"short\n" + b"x" * 10_000 + b"\n" + b"tail without newline"
    reader = LineReader(pieces(data, 100), cap=16, start=40)
    lines = list(reader)
    assert [(line.start, line.size, line.head, line.truncated) for line in lines] == [
        (40, 6, b"short\n", False),
        (46, 10_001, b"x" * 16, True),
        (10_047, 20, b"tail without new", True),
    ]
    assert reader.largest_held <= 100 + 16  # one piece and one line's head, never the line


def test_the_cap_may_change_between_lines_and_zero_only_counts() -> None:
    data = b"".join(f"line {i:03}\n".encode() for i in range(5))  # 9 bytes each
    reader = LineReader(pieces(data, 4), cap=0)
    got = []
    for line in reader:
        got.append(line.head)
        reader.cap = 9 if len(got) % 2 else 0
    assert got == [b"", b"line 001\n", b"", b"line 003\n", b""]
    assert sum(1 for _ in LineReader([], cap=5)) == 0


async def test_the_budget_is_shared_waits_and_then_refuses() -> None:
    budget = ByteBudget(100)
    first = await budget.reserve(60, owner="a", wait=0)
    with pytest.raises(ServiceUnavailable) as refused:
        await budget.reserve(50, owner="b", wait=0.1)
    assert refused.value.status_code == 503 and refused.value.code == "server_busy"
    assert refused.value.headers["retry-after"] == "1"
    assert not first.grow(41) and first.grow(40) and budget.used == 100
    first.release()
    first.release()  # once only
    assert budget.used == 0
    second = await budget.reserve(100, owner="a", wait=0)
    second.release()
    assert budget.used == 0


async def test_one_owner_holds_at_most_a_quarter_and_another_still_reads() -> None:
    budget = ByteBudget(400)
    first = await budget.reserve(60, owner="a", wait=0)
    second = await budget.reserve(40, owner="a", wait=0)  # a quarter, all told
    with pytest.raises(TooManyRequests) as refused:
        await budget.reserve(10, owner="a", wait=0.1)
    assert refused.value.code == "too_many_reads"
    other = await budget.reserve(100, owner="b", wait=0)
    for held in (first, second, other):
        held.release()
    assert budget.used == 0 and not budget._owners
