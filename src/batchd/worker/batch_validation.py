"""Validating a batch: its input file checked line by line and cut into chunks, or the
batch failed with the reasons why."""

from __future__ import annotations

import threading

from batchd.batches.validation import InputValidator, LineError, ValidationOutcome
from batchd.limits.errors import QuotaExceeded
from batchd.limits.tiers import batch_request_limit
from batchd.store.records import BatchRecord, Lease
from batchd.worker.batch_lease import Abandoned, with_lease
from batchd.worker.context import WorkerContext


def _fail(errors: list[LineError]) -> ValidationOutcome:
    return ValidationOutcome(plans=[], total=0, model=None, errors=errors)


async def validate(ctx: WorkerContext, batch: BatchRecord, lease: Lease) -> None:
    settings = ctx.settings
    _, tier = ctx.tiers.resolve(batch.tier)
    source = await ctx.store.get_file(batch.input_file_id, owner=batch.owner)
    if source is None:
        outcome = _fail([LineError(code="invalid_request", param="file_id",
                                   message=f"Cannot find file {batch.input_file_id}.")])
    elif source.purpose != "batch":
        outcome = _fail([LineError(
            code="invalid_request", param="input_file_id",
            message=f"File {source.id} has purpose '{source.purpose}'; a batch input file "
                    "must be uploaded with purpose 'batch'.")])
    else:
        validator = InputValidator(
            endpoint=batch.endpoint, served_model=ctx.registry.served_id,
            capabilities=ctx.registry.capabilities,
            max_requests=batch_request_limit(tier, settings.max_requests_per_batch),
            chunk_lines=settings.chunk_lines,
            max_listed_errors=settings.max_listed_errors,
        )

        def scan(stop: threading.Event) -> ValidationOutcome:
            for n, raw in enumerate(ctx.blobs.lines(source.blob_key)):
                if n % 4096 == 0 and stop.is_set():
                    raise Abandoned
                validator.feed(raw)
                if validator.too_many:
                    break
            return validator.finish()

        try:
            outcome = await with_lease(ctx, batch, lease, scan, abandon_on_stop_reason=True)
        except Abandoned:
            await ctx.store.release_batch_lease(batch.id, lease)
            return
    now = int(ctx.clock.now())
    if outcome.ok:
        try:
            if not await ctx.store.start_batch(
                    batch.id, lease, plans=outcome.plans, total=outcome.total,
                    model=outcome.model, tokens=outcome.tokens,
                    token_limit=tier.enqueued_tokens_per_model, now=now):
                await _hand_over(ctx, batch, lease)
            return
        except QuotaExceeded as over:
            outcome.errors.append(LineError(
                code="token_limit_exceeded",
                message=f"Enqueued token limit reached for {over.model}: this batch needs "
                        f"{over.requested:,} tokens and {over.enqueued:,} are already enqueued "
                        f"by your unfinished batches, over the limit of {over.limit:,}. Try "
                        "again once some of them finish.",
            ))
    if outcome.errors and not await ctx.store.fail_batch(
            batch.id, lease, errors=[e.as_dict() for e in outcome.errors], now=now):
        await _hand_over(ctx, batch, lease)


async def _hand_over(ctx: WorkerContext, batch: BatchRecord, lease: Lease) -> None:
    """The batch was cancelled (or expired) while its file was being read: give its lease
    back now, so that assembly takes it at once instead of after the lease runs out (a
    cancel right after create used to take one lease length, ~30 s)."""
    await ctx.store.release_batch_lease(batch.id, lease)
