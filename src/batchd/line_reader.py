"""The lines of a stored object, read in bounded pieces: however long a line is, the reader
holds at most one piece and `cap` bytes of it (a file may be one 200 MB line)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    start: int  # where the line begins in the object
    size: int  # its length in bytes, with its newline
    head: bytes  # the whole line, or its first `cap` bytes when it is longer

    @property
    def truncated(self) -> bool:
        return len(self.head) < self.size


class LineReader:
    """Iterates the lines of `pieces` (the object's bytes from `start`, in order). `cap` may
    change between lines: it is read as each line begins."""

    def __init__(self, pieces: Iterable[bytes], *, cap: int, start: int = 0) -> None:
        self.pieces = pieces
        self.cap = cap
        self.start = start
        self.largest_held = 0  # the most bytes held at once: one piece and one line's head

    def __iter__(self) -> Iterator[Line]:
        head = bytearray()
        size = 0
        line_start = self.start
        cap = self.cap
        for piece in self.pieces:
            at = 0
            while at < len(piece):
                newline = piece.find(b"\n", at)
                end = len(piece) if newline < 0 else newline + 1
                keep = min(end - at, cap - len(head))
                if keep > 0:
                    head += piece[at:at + keep]
                size += end - at
                at = end
                self.largest_held = max(self.largest_held, len(piece) + len(head))
                if newline >= 0:
                    yield Line(line_start, size, bytes(head))
                    line_start += size
                    head.clear()
                    size = 0
                    cap = self.cap
        if size:  # the last line has no newline
            yield Line(line_start, size, bytes(head))
