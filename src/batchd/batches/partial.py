"""Results while a batch runs: the output lines committed so far, page by page, each line once.

Every chunk's committed parts are write-once objects appended to the chunk's `parts` in order,
so "what has been read" is a frontier: every chunk before `base` is read to its end, and of
each later chunk the first `read[chunk]` parts. That frontier is the cursor (`after`), and a
part is the unit of a page (pages end on a part boundary, so they may pass `limit` by less
than one part), unless the page's byte budget ends it inside a part: the cursor then also
says how much of that part was read (`within`).

Once the batch has ended its parts are gone, copied into the output file in (chunk, part)
order. The parts' line counts then say which lines of the output file the frontier has
already covered, so a reader who started mid-batch goes on from the final file without a line
twice or missed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field

import orjson

from batchd.errors import Conflict, InvalidRequest
from batchd.line_reader import Line, LineReader
from batchd.read_budget import Reservation, busy
from batchd.store.blobs import BlobMissing, BlobStore
from batchd.store.records import BatchRecord, Chunk, ChunkState
from batchd.store.roles import ApiStore

# Chunk numbers and part counts are far below this; a cursor saying more was not ours.
_MAX_NUMBER = 2**53
_CHUNK_KEY = re.compile(r"0|[1-9][0-9]{0,15}")


def _is_count(value: object) -> bool:
    # bool is an int subclass; floats (1e300, 2.0) are not counts.
    return type(value) is int and 0 <= value <= _MAX_NUMBER


def _bad_after() -> InvalidRequest:
    return InvalidRequest("Invalid 'after': pass the x-batchd-after header of the previous "
                          "page.", code="invalid_value", param="after")


@dataclass
class Frontier:
    base: int = 0
    read: dict[int, int] = field(default_factory=dict)
    # Of chunk → its next unread part (`read[chunk]`), the (lines, bytes) a page that ended at
    # its byte budget already read. Sent as a second part of the cursor, after a dot.
    within: dict[int, tuple[int, int]] = field(default_factory=dict)

    def copy(self) -> Frontier:
        return Frontier(self.base, dict(self.read), dict(self.within))

    def encode(self) -> str:
        raw = orjson.dumps({"b": self.base, "r": {str(k): v for k, v in self.read.items()}})
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if self.within:
            inside = orjson.dumps({str(k): list(v) for k, v in self.within.items()})
            token += "." + base64.urlsafe_b64encode(inside).decode().rstrip("=")
        return token

    @classmethod
    def decode(cls, token: str | None) -> Frontier:
        head, dot, inside = (token or "").partition(".")
        frontier = cls._decode_read(head)
        if dot:
            frontier.within = _decode_within(inside)
        return frontier

    @classmethod
    def _decode_read(cls, token: str | None) -> Frontier:
        """The frontier a client sent back. Whatever it sent (bad base64 or JSON, wrong
        types, floats, numbers of any size, negative ones) is a 400 naming `after`, never a
        frontier that fails later: every number is a JSON integer in [0, _MAX_NUMBER], so the
        next page's `encode` cannot overflow."""
        if not token:
            return cls()
        try:
            raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
            raise _bad_after() from exc
        if not isinstance(raw, dict) or set(raw) != {"b", "r"} or not isinstance(raw["r"], dict):
            raise _bad_after()
        base, read = raw["b"], raw["r"]
        if not _is_count(base) or not all(
                _CHUNK_KEY.fullmatch(k) and int(k) <= _MAX_NUMBER and _is_count(v)
                for k, v in read.items()):
            raise _bad_after()
        return cls(base=base, read={int(k): v for k, v in read.items()})

    def inside(self, chunk_no: int) -> tuple[int, int]:
        """(lines, bytes) already read of this chunk's next unread part."""
        return self.within.get(chunk_no, (0, 0))

    def done_with(self, chunk_no: int) -> int:
        """Parts of this chunk already read (every one, before `base`)."""
        return 1 << 62 if chunk_no < self.base else self.read.get(chunk_no, 0)

    def compact(self, finished: dict[int, int]) -> None:
        """Move `base` past chunks that are read to their end and get no more parts
        (`finished`: chunk → its final number of parts)."""
        while self.base in finished and self.read.get(self.base, 0) >= finished[self.base]:
            self.read.pop(self.base, None)
            self.base += 1
        self.read = {k: v for k, v in self.read.items() if k >= self.base}
        self.within = {k: v for k, v in self.within.items() if k >= self.base}


def _decode_within(token: str) -> dict[int, tuple[int, int]]:
    """The cursor's second part: as strict as the first (any tampering is a 400)."""
    bad = InvalidRequest("Invalid 'after': pass the x-batchd-after header of the previous "
                         "page.", code="invalid_value", param="after")
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise bad from exc
    if not isinstance(raw, dict) or not raw or not all(
            _WITHIN_KEY.fullmatch(k) and isinstance(v, list) and len(v) == 2
            and all(type(n) is int and 0 <= n <= _WITHIN_MAX for n in v)
            for k, v in raw.items()):
        raise bad
    return {int(k): (v[0], v[1]) for k, v in raw.items()}


# Chunk numbers, line counts and byte offsets inside one part are far below this.
_WITHIN_MAX = 2**53
_WITHIN_KEY = re.compile(r"0|[1-9][0-9]{0,14}")


@dataclass
class Page:
    lines: list[bytes]
    after: Frontier
    more: bool


class PageBytes:
    """What one page holds, within its reservation from the process-wide read budget: it
    ends before a line that would take it past `budget` bytes; a single line longer than a
    whole page comes alone, if the process-wide budget has room for it (a result line is
    whatever the engine answered: it cannot be cut)."""

    def __init__(self, held: Reservation, budget: int) -> None:
        self.held = held
        self.budget = budget
        self.lines: list[bytes] = []
        self.size = 0

    def room(self) -> int:
        return max(0, self.budget - self.size)

    def add(self, blobs: BlobStore, key: str, line: Line) -> bool:
        """Keep `line` of the object `key`; False if the page ends before it."""
        if line.truncated:  # it did not fit in the room left
            if self.lines:
                return False
            # Alone on its page: read whole, with room for it and the response's copy.
            if not self.held.grow(2 * line.size):
                # Never, even once every other read has finished: say so, not "try again".
                if 2 * line.size > self.held.budget.total - self.held.size:
                    raise Conflict(f"An output line of {line.size:,} bytes is larger than "
                                   "this server may hold for a read; read it from the "
                                   "batch's output file once the batch ends.",
                                   code="output_line_too_large")
                raise busy()
            whole = b"".join(blobs.read_range(key, line.start, line.start + line.size))
            self.lines.append(whole)
            self.size += len(whole)
            return True
        self.lines.append(line.head)
        self.size += line.size
        return True

    def read(self, blobs: BlobStore, key: str, start: int,
             count: int | None = None) -> tuple[int, int] | None:
        """Lines of the part `key` from byte `start` (up to `count` of them); None once all
        are kept, else (lines, bytes) kept before the page ended."""
        reader = LineReader(blobs.read_range(key, start), cap=self.room(), start=start)
        lines = size = 0
        for line in reader:
            if count is not None and lines >= count:
                break
            if not self.add(blobs, key, line):
                return lines, size
            lines += 1
            size += line.size
            reader.cap = self.room()
        return None


async def output_page(store: ApiStore, blobs: BlobStore, batch: BatchRecord,
                      after: Frontier, *, limit: int, held: Reservation,
                      budget: int) -> Page:
    """The next output lines after `after` (at least `limit`, or all there are, or fewer
    once they hold `budget` bytes), within the reservation `held`."""
    chunks = await store.list_chunks(batch.id)
    if not batch.status.terminal:
        try:
            return await asyncio.to_thread(_from_parts, blobs, chunks, after, limit,
                                           PageBytes(held, budget))
        except BlobMissing:
            # The batch ended while we read (its parts were copied and deleted).
            fresh = await store.get_batch(batch.id, owner=None)
            if fresh is None or not fresh.status.terminal:
                raise
            batch, chunks = fresh, await store.list_chunks(batch.id)
    if batch.output_file_id is None:
        return Page(lines=[], after=after, more=False)
    output = await store.get_file(batch.output_file_id, owner=None)
    if output is None:
        raise Conflict("The batch's output file was deleted; its results cannot be read "
                       "any more.", code="output_file_missing")
    if any("n_ok" not in part for chunk in chunks for part in chunk.parts):
        raise Conflict("This batch finished before batchd counted result lines per part; "
                       "read its output file instead.", code="cursor_unsupported")
    return await asyncio.to_thread(_from_output_file, blobs, output.blob_key, chunks, after,
                                   limit, PageBytes(held, budget))


def _from_parts(blobs: BlobStore, chunks: list[Chunk], after: Frontier, limit: int,
                page: PageBytes) -> Page:
    frontier = after.copy()
    for chunk in chunks:
        if len(page.lines) >= limit:
            break
        start = frontier.done_with(chunk.chunk_no)
        for index in range(start, len(chunk.parts)):
            if len(page.lines) >= limit:
                break
            key = chunk.parts[index].get("ok")
            lines, size = frontier.inside(chunk.chunk_no) if index == start else (0, 0)
            stopped = page.read(blobs, key, size) if key else None
            if stopped is not None:  # the page is full inside this part
                frontier.within[chunk.chunk_no] = (lines + stopped[0], size + stopped[1])
                return Page(lines=page.lines, after=_compacted(frontier, chunks), more=True)
            frontier.read[chunk.chunk_no] = index + 1
            frontier.within.pop(chunk.chunk_no, None)
    # Running: more may come.
    return Page(lines=page.lines, after=_compacted(frontier, chunks), more=True)


def _compacted(frontier: Frontier, chunks: list[Chunk]) -> Frontier:
    frontier.compact({c.chunk_no: len(c.parts) for c in chunks
                      if c.state in (ChunkState.DONE, ChunkState.FAILED)})
    return frontier


def _from_output_file(blobs: BlobStore, key: str, chunks: list[Chunk], after: Frontier,
                      limit: int, page: PageBytes) -> Page:
    """The output file holds every chunk's ok-part lines in (chunk, part) order."""
    frontier = after.copy()
    offset, first = _first_unread(chunks, frontier)
    # Parts before the first unread one are behind the reader already (unless sizes are
    # unknown), and so are the lines of it an earlier page read.
    jumped = offset is not None and first is not None
    position = (offset or 0) + (frontier.inside(first[0])[1] if jumped and first else 0)
    reader = LineReader(blobs.read_range(key, position), cap=0, start=position)
    source = iter(reader)

    def skip(n: int) -> None:
        reader.cap = 0  # counted, not held
        for _ in range(n):
            next(source, None)

    # Until the first unread part, the reader starts past the parts read before (when their
    # sizes are known); after it, a part read before (a later chunk's) is still ahead of the
    # reader and is skipped line by line.
    behind_reader = offset is not None
    for chunk in chunks:
        start = frontier.done_with(chunk.chunk_no)
        for index, part in enumerate(chunk.parts):
            count = int(part.get("n_ok", 0) or 0) if part.get("ok") else 0
            if index < start:
                if not behind_reader:
                    skip(count)  # read before
                continue
            behind_reader = False
            lines, size = frontier.inside(chunk.chunk_no) if index == start else (0, 0)
            if not (jumped and (chunk.chunk_no, index) == first):
                skip(lines)
            if len(page.lines) >= limit:
                return Page(lines=page.lines, after=_finished(frontier, chunks), more=True)
            for _ in range(count - lines):
                reader.cap = page.room()
                line = next(source, None)
                if line is None:
                    break
                if not page.add(blobs, key, line):
                    frontier.within[chunk.chunk_no] = (lines, size)
                    return Page(lines=page.lines, after=_finished(frontier, chunks),
                                more=True)
                lines += 1
                size += line.size
            frontier.read[chunk.chunk_no] = index + 1
            frontier.within.pop(chunk.chunk_no, None)
    return Page(lines=page.lines, after=_finished(frontier, chunks), more=False)


def _finished(frontier: Frontier, chunks: list[Chunk]) -> Frontier:
    frontier.compact({c.chunk_no: len(c.parts) for c in chunks})
    return frontier


def _first_unread(chunks: list[Chunk],
                  frontier: Frontier) -> tuple[int | None, tuple[int, int] | None]:
    """Where in the output file the first part not yet read begins (None if a part before it
    does not say its size), and which part that is (chunk, index): pages after the first do
    not reread the file from the start."""
    offset = 0
    for chunk in chunks:
        start = frontier.done_with(chunk.chunk_no)
        for index, part in enumerate(chunk.parts):
            if index >= start:
                return offset, (chunk.chunk_no, index)
            if part.get("ok"):
                if "b_ok" not in part:
                    return None, None
                offset += int(part["b_ok"])
    return offset, None
