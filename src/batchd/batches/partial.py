"""Results while a batch runs: the output lines committed so far, page by page, each line once.

Every chunk's committed parts are write-once objects appended to the chunk's `parts` in order,
so "what has been read" is a frontier: every chunk before `base` is read to its end, and of
each later chunk the first `read[chunk]` parts. That frontier is the cursor (`after`), and a
part is the unit of a page (pages end on a part boundary, so they may pass `limit` by less
than one part).

Once the batch has ended its parts are gone, copied into the output file in (chunk, part)
order. The parts' line counts then say which lines of the output file the frontier has
already covered, so a reader who started mid-batch goes on from the final file without a line
twice or missed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field

import orjson

from batchd.errors import Conflict, InvalidRequest
from batchd.store.blobs import BlobMissing, BlobStore
from batchd.store.metadata import MetadataStore
from batchd.store.records import BatchRecord, Chunk, ChunkState


@dataclass
class Frontier:
    base: int = 0
    read: dict[int, int] = field(default_factory=dict)

    def encode(self) -> str:
        raw = orjson.dumps({"b": self.base, "r": {str(k): v for k, v in self.read.items()}})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> Frontier:
        if not token:
            return cls()
        try:
            raw = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            frontier = cls(base=int(raw["b"]), read={int(k): int(v)
                                                     for k, v in raw["r"].items()})
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError,
                orjson.JSONDecodeError) as exc:
            raise InvalidRequest("Invalid 'after': pass the x-batchd-after header of the "
                                 "previous page.", code="invalid_value", param="after") from exc
        if frontier.base < 0 or any(n < 0 or k < 0 for k, n in frontier.read.items()):
            raise InvalidRequest("Invalid 'after'.", code="invalid_value", param="after")
        return frontier

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


@dataclass
class Page:
    lines: list[bytes]
    after: Frontier
    more: bool


async def output_page(store: MetadataStore, blobs: BlobStore, batch: BatchRecord,
                      after: Frontier, *, limit: int) -> Page:
    """The next output lines after `after` (at least `limit`, or all there are)."""
    chunks = await store.list_chunks(batch.id)
    if not batch.status.terminal:
        try:
            return await asyncio.to_thread(_from_parts, blobs, chunks, after, limit)
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
                                   limit)


def _from_parts(blobs: BlobStore, chunks: list[Chunk], after: Frontier, limit: int) -> Page:
    lines: list[bytes] = []
    frontier = Frontier(after.base, dict(after.read))
    for chunk in chunks:
        if len(lines) >= limit:
            break
        start = frontier.done_with(chunk.chunk_no)
        for index in range(start, len(chunk.parts)):
            if len(lines) >= limit:
                break
            key = chunk.parts[index].get("ok")
            if key:
                lines.extend(blobs.lines(key))
            frontier.read[chunk.chunk_no] = index + 1
    frontier.compact({c.chunk_no: len(c.parts) for c in chunks
                      if c.state in (ChunkState.DONE, ChunkState.FAILED)})
    return Page(lines=lines, after=frontier, more=True)  # running: more may come


def _from_output_file(blobs: BlobStore, key: str, chunks: list[Chunk], after: Frontier,
                      limit: int) -> Page:
    """The output file holds every chunk's ok-part lines in (chunk, part) order."""
    lines: list[bytes] = []
    frontier = Frontier(after.base, dict(after.read))
    offset = _first_unread_offset(chunks, frontier)
    source = iter(blobs.lines(key, offset or 0))
    more = False
    # Parts before the first unread one are behind `source` already (unless sizes are unknown).
    skipping = offset is not None
    for chunk in chunks:
        start = frontier.done_with(chunk.chunk_no)
        for index, part in enumerate(chunk.parts):
            count = int(part.get("n_ok", 0) or 0) if part.get("ok") else 0
            if index < start:
                if not skipping:
                    for _ in range(count):
                        next(source, None)  # read before: skip
                continue
            skipping = False
            if len(lines) >= limit:
                more = True
                break
            lines.extend(line for _, line in zip(range(count), source, strict=False))
            frontier.read[chunk.chunk_no] = index + 1
        if more:
            break
    frontier.compact({c.chunk_no: len(c.parts) for c in chunks})
    return Page(lines=lines, after=frontier, more=more)


def _first_unread_offset(chunks: list[Chunk], frontier: Frontier) -> int | None:
    """Where in the output file the first part not yet read begins (None if a part before it
    does not say its size): pages after the first do not reread the file from the start."""
    offset = 0
    for chunk in chunks:
        start = frontier.done_with(chunk.chunk_no)
        for index, part in enumerate(chunk.parts):
            if index >= start:
                return offset
            if part.get("ok"):
                if "b_ok" not in part:
                    return None
                offset += int(part["b_ok"])
    return offset
