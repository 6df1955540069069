"""A batch's input as the worker reads it: where it lies, and the requests of one chunk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from batchd.files import blob_key
from batchd.store.records import BatchRecord, Chunk
from batchd.worker.context import WorkerContext

Request = tuple[str, dict[str, Any]]
"""(custom_id, body) of one request line."""


async def input_key_of(ctx: WorkerContext, batch: BatchRecord) -> str:
    """The blob that holds the batch's input file."""
    source = await ctx.store.get_file(batch.input_file_id, owner=None)
    # A deleted input file keeps its record (hidden) while the batch is active; without a
    # record, the key is the one every upload gets.
    return source.blob_key if source else blob_key(batch.input_file_id)


def chunk_requests(ctx: WorkerContext, input_key: str, chunk: Chunk) -> Iterator[Request]:
    """(custom_id, body) of each request line in the chunk (validated earlier)."""
    for raw in ctx.blobs.lines(input_key, chunk.byte_start, chunk.byte_end):
        if raw.strip():
            item = orjson.loads(raw)
            yield item["custom_id"], item["body"]


def read_requests(ctx: WorkerContext, input_key: str, chunk: Chunk) -> list[Request]:
    return list(chunk_requests(ctx, input_key, chunk))
