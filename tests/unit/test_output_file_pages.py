"""Pages of a finished batch's output read from its final file, with a cursor taken while it
ran: each line once, none lost, whatever the cursor had read of which chunks."""

from __future__ import annotations

from pathlib import Path

from batchd.batches.partial import Frontier, PageBytes, _from_output_file
from batchd.read_budget import ByteBudget, Reservation
from batchd.store.blobs import LocalBlobStore
from batchd.store.records import Chunk, ChunkState


def chunk(no: int, parts: list[list[bytes]]) -> Chunk:
    return Chunk(batch_id="b", chunk_no=no, byte_start=0, byte_end=0, line_start=1, n_lines=4,
                 state=ChunkState.DONE, owner=None, generation=1, attempts=0,
                 parts=[{"ok": f"p{no}-{i}", "n_ok": len(lines),
                         "b_ok": sum(len(line) for line in lines)}
                        for i, lines in enumerate(parts)])


def test_a_cursor_from_a_running_batch_reads_the_rest_of_the_file_once(
        tmp_path: Path) -> None:
    # Two chunks of two parts each; the reader had the first part of each while they ran.
    lines = {(c, p): [f'{{"custom_id": "c{c}p{p}l{i}"}}\n'.encode() for i in range(2)]
             for c in range(2) for p in range(2)}
    chunks = [chunk(c, [lines[(c, 0)], lines[(c, 1)]]) for c in range(2)]
    blobs = LocalBlobStore(tmp_path)
    with blobs.writer("out.jsonl") as out:
        for key in sorted(lines):
            out.write(b"".join(lines[key]))
    budget = ByteBudget(1 << 20)
    page = _from_output_file(blobs, "out.jsonl", chunks, Frontier(0, {0: 1, 1: 1}), 100,
                             PageBytes(Reservation(budget, 1 << 20, owner="o"), 1 << 20))
    assert page.lines == lines[(0, 1)] + lines[(1, 1)] and not page.more
