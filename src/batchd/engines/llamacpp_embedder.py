"""Embeddings on llama.cpp, many inputs per decode step.

One thread owns a llama.cpp context made for embeddings. Requests put their inputs (token
lists) in a queue, real-time ones ahead of batch work; each step the thread packs as many
waiting inputs as fit (up to `embedding_step_tokens` tokens and the context's sequence
limit; a longer input goes alone) into one `llama_decode`, reads each sequence's pooled
vector, and hands every request its vectors once all of its inputs are done. Concurrent
requests (a batch's lanes) thereby share steps instead of decoding one short input at a
time.

Each priority's queue is kept per owner (tenant), and a step takes their inputs in turn: a
request of 2,048 inputs is split into fair shares, so another tenant's one input rides in
the next step instead of waiting for all of them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchd.engines.base import (
    EmbeddingResult,
    EngineFailure,
    EngineRequestError,
    Priority,
)
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.limits.preparation import Preparation, work_owner
from batchd.openai.embeddings import EmbeddingInputs, normalized

log = logging.getLogger(__name__)

POOLING = {"mean": 1, "cls": 2, "last": 3}  # llama_pooling_type values
POOLING_NONE = 0
POOLING_UNSPECIFIED = -1


@dataclass(eq=False)
class _Job:
    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[list[float]]]
    vectors: list[list[float] | None] = field(default_factory=list)
    left: int = 0
    cancelled: bool = False


_Queue = collections.deque[tuple[_Job, int]]  # one owner's waiting inputs: (job, index)


class Embedder:
    def __init__(self, path: Path, options: LlamaCppOptions,
                 preparation: Preparation) -> None:
        from llama_cpp import Llama

        tokens = options.embedding_max_tokens
        threads = options.n_threads or os.cpu_count() or 1
        pooling = POOLING[options.pooling] if options.pooling else POOLING_UNSPECIFIED
        self._llama: Any = Llama(
            model_path=str(path), embedding=True, n_ctx=tokens, n_batch=tokens,
            n_ubatch=tokens, n_threads=threads, n_threads_batch=threads,
            pooling_type=pooling, n_gpu_layers=options.n_gpu_layers, verbose=False)
        if int(self._llama.pooling_type()) == POOLING_NONE:
            self._llama.close()
            raise EngineFailure(
                f"{path.name} declares no pooling for embeddings (it is not an embedding "
                "model); set `pooling: mean` (or cls, last) in its models entry to embed "
                "with it anyway.")
        import llama_cpp as lib

        self._lib = lib
        self.max_tokens = tokens
        self.step_tokens = min(options.embedding_step_tokens, tokens)
        self.max_seqs = int(self._llama.context_params.n_seq_max)
        self.n_embd: int = self._llama.n_embd()
        self.n_vocab: int = self._llama.n_vocab()
        self.matryoshka = options.matryoshka
        self._preparation = preparation
        # priority → owner → that owner's waiting inputs; owners in turn (the next first)
        self._waiting: dict[Priority, collections.OrderedDict[str, _Queue]] = {
            Priority.REALTIME: collections.OrderedDict(),
            Priority.BATCH: collections.OrderedDict()}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llamacpp-embedder",
                                        daemon=True)
        self._thread.start()

    # --- the async face ---------------------------------------------------------------------

    def tokens_of(self, inputs: EmbeddingInputs) -> list[list[int]]:
        """Each input as tokens, refused by name when it cannot be embedded whole."""
        if inputs.tokens is not None:
            lists = inputs.tokens
            for i, ids in enumerate(lists):
                if max(ids) >= self.n_vocab:
                    raise EngineRequestError(
                        f"Invalid 'input[{i}]': token ids must be below the model's "
                        f"vocabulary size ({self.n_vocab}).", code="invalid_value",
                        param=f"input[{i}]")
        else:
            lists = [self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
                     for text in inputs.texts or []]
        for i, ids in enumerate(lists):
            if not ids:  # a model that adds no BOS token, given only whitespace
                raise EngineRequestError(f"Invalid 'input[{i}]': it has no tokens.",
                                         code="invalid_value", param=f"input[{i}]")
            if len(ids) > self.max_tokens:
                raise EngineRequestError(
                    f"This model's maximum input length is {self.max_tokens} tokens; "
                    f"input[{i}] is {len(ids)} tokens.", code="context_length_exceeded",
                    param=f"input[{i}]")
        return lists

    async def embed(self, inputs: EmbeddingInputs, *, priority: Priority) -> EmbeddingResult:
        if inputs.dimensions is not None:
            if not self.matryoshka:
                raise EngineRequestError(
                    "This model does not support specifying dimensions (its models entry "
                    "does not say `matryoshka: true`).", code="invalid_value",
                    param="dimensions")
            if inputs.dimensions > self.n_embd:
                raise EngineRequestError(
                    f"Invalid 'dimensions': this model's embeddings have {self.n_embd} "
                    "dimensions, the most it can be asked for.", code="invalid_value",
                    param="dimensions")
        lists = await self._preparation.run(lambda: self.tokens_of(inputs))
        loop = asyncio.get_running_loop()
        job = _Job(inputs=lists, loop=loop, future=loop.create_future(),
                   vectors=[None] * len(lists), left=len(lists))
        owner = work_owner.get()
        with self._wake:
            if self._stopping:  # closed while the inputs were being tokenized
                raise EngineFailure("The engine was shut down.")
            queues = self._waiting[priority]
            queue = queues.get(owner)
            if queue is None:
                queue = queues[owner] = collections.deque()
            queue.extend((job, i) for i in range(len(lists)))
            self._wake.notify()
        try:
            vectors = await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # its inputs still queued are skipped
            raise
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(ids) for ids in lists))

    def close(self) -> None:
        """Stop after the step in progress; every request still waiting fails (a restarted
        engine's callers retry on the new one), none is left waiting forever."""
        with self._wake:
            self._stopping = True
            queued = [job for queues in self._waiting.values() for queue in queues.values()
                      for job, _ in queue]
            for queues in self._waiting.values():
                queues.clear()
            self._wake.notify()
        for job in queued:
            _settle(job, EngineFailure("The engine was shut down."))
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self._llama.close()

    # --- the decoding thread ----------------------------------------------------------------

    def _take(self) -> list[tuple[_Job, int]] | None:
        """The inputs of the next step (None: stop). Waits for work. Real-time inputs first;
        within a priority, one input of each owner in turn."""
        with self._wake:
            while not self._stopping and not any(self._waiting.values()):
                self._wake.wait()
            if self._stopping:
                return None
            step: list[tuple[_Job, int]] = []
            used = 0
            for queues in self._waiting.values():
                while queues and len(step) < self.max_seqs:
                    owner, queue = next(iter(queues.items()))
                    job, i = queue[0]
                    if not job.cancelled:
                        size = len(job.inputs[i])
                        if step and used + size > self.step_tokens:
                            return step
                        step.append((job, i))
                        used += size
                    queue.popleft()
                    if queue:
                        queues.move_to_end(owner)  # the next owner's turn
                    else:
                        del queues[owner]
            return step

    def _loop(self) -> None:
        while (step := self._take()) is not None:
            if not step:
                continue
            try:
                vectors = self._decode([job.inputs[i] for job, i in step])
            except Exception as exc:  # every request in the step learns of it
                log.exception("an embedding step failed")
                for job, _ in step:
                    _settle(job, EngineFailure(f"llama.cpp failed to embed: {exc}"))
                continue
            for (job, i), vector in zip(step, vectors, strict=True):
                job.vectors[i] = vector
                job.left -= 1
                if job.left == 0:
                    _settle(job, [v for v in job.vectors if v is not None])

    def _decode(self, inputs: list[list[int]]) -> list[list[float]]:
        lib, ctx, batch = self._lib, self._llama._ctx, self._llama._batch
        ctx.kv_cache_clear()
        batch.reset()
        for seq_id, ids in enumerate(inputs):
            batch.add_sequence(ids, seq_id, True)  # every token an output: pooled embeddings
        ctx.decode(batch)
        out = []
        for seq_id in range(len(inputs)):
            pointer = lib.llama_get_embeddings_seq(ctx.ctx, seq_id)
            if not pointer:
                raise EngineFailure("llama.cpp returned no pooled embedding")
            out.append(normalized([float(x) for x in pointer[:self.n_embd]]))
        batch.reset()
        return out


def _settle(job: _Job, outcome: list[list[float]] | BaseException) -> None:
    if job.cancelled:
        return
    job.cancelled = True  # settled once: a later failure of its other inputs is moot

    def give() -> None:
        if job.future.done():
            return
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
    try:
        job.loop.call_soon_threadsafe(give)
    except RuntimeError:  # that loop is closed: nobody waits for this any more
        pass
