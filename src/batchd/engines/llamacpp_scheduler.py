"""The continuous-batching scheduler behind the llama.cpp engine.

One thread owns a llama.cpp context with several sequence slots. Every step it puts one
`llama_decode` together from the next token of each generating sequence plus prompt chunks of
newly admitted ones, samples each sequence with its own sampler chain, and admits waiting
requests as others finish (real-time requests first). Prompts that start like an earlier one
copy its KV cells (`llama_memory_seq_cp`) instead of evaluating the prefix again.

Real-time slots are shared fairly across owners (tenants): a freed slot goes to the waiting
sequence whose owner holds the fewest, and an owner waiting with none while another holds
more than its share takes a slot back at once: that owner's newest sequence is preempted (its
KV cells dropped, recomputed when it is admitted again), so one request of 128 choices cannot
keep another tenant's 4-token chat waiting behind it.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import enum
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchd.engines.base import Delta, EngineFailure, Priority
from batchd.engines.constraints import Masks
from batchd.engines.llamacpp_options import LlamaCppOptions


class Finish(enum.Enum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(eq=False)
class Sequence:
    """One choice of one request, from admission to its last token."""

    prompt: list[int]
    sampler: Any
    max_new: int
    stops: list[str]
    priority: int
    index: int
    owner: str
    emit: Callable[[Delta], None]
    done: Callable[[Sequence, BaseException | None], None]
    cancelled: threading.Event
    logprobs: int | None = None  # None: off; else how many top alternatives
    seq_id: int = -1
    n_past: int = 0  # tokens of this sequence already in the KV cache
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))
    finish: Finish | None = None
    reused: int = 0  # prompt tokens taken from the prefix cache (usage: first admission)
    lender: PrefixEntry | None = None  # the cached prefix whose KV cells it shares
    shared: int = 0  # of those cells, how many it shares now (not in its `cost`)
    cost: int = 0  # KV cells reserved for it (shared prefix cells are the lender's)
    token_logprobs: list[dict[str, Any]] = field(default_factory=list)
    logprobs_sent: int = 0  # of token_logprobs, already streamed
    order: int = 0  # when it was submitted: earlier first, among equals
    # Constrained decoding (engines/constraints.py): the sequence's llguidance matcher, which
    # masks every sampled token once `think_end` (if any) has been generated.
    matcher: Any = None
    think_end: str | None = None  # a reasoning model's end of thinking (`</think>`)
    thought: int | None = None  # tokens generated when `think_end` came (None: not yet)
    quiet: bool = False  # stream nothing until it is finished (tool calls are sent whole)

    @property
    def constrained(self) -> bool:
        return self.matcher is not None and (self.think_end is None or self.thought is not None)

    @property
    def context(self) -> list[int]:
        """What must be in its KV cells before its next token: the prompt and, once it has
        generated, every token but the last (the next step decodes that one). Only a
        preempted sequence prefills past its prompt."""
        return self.prompt + self.generated[:-1] if self.generated else self.prompt

    @property
    def prefilled(self) -> bool:
        return self.n_past >= len(self.prompt) + max(len(self.generated) - 1, 0)


@dataclass
class PrefixEntry:
    seq_id: int
    tokens: list[int]
    used_at: float


class Scheduler:
    """Owns the llama.cpp context; everything here runs on the scheduler thread only, except
    `submit` and `stop`, which hand work over under the condition variable."""

    def __init__(self, llama: Any, options: LlamaCppOptions) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.options = options
        self.vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        trained = llama_cpp.llama_model_n_ctx_train(llama.model)
        kv_tokens = options.kv_tokens or max(options.n_ctx, min(16_384, trained))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_batch = options.n_batch
        params.n_ubatch = options.n_batch
        params.n_seq_max = options.parallel + options.prefix_cache
        params.kv_unified = True  # one pool: sequences share cells, prefixes are shared
        threads = options.n_threads or os.cpu_count() or 1
        params.n_threads = threads
        params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self.ctx:
            raise EngineFailure("llama.cpp could not create a context (out of memory?)")
        self.kv_tokens = kv_tokens
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(options.n_batch, 0, 1)
        self.free_slots = list(range(options.parallel))
        self.realtime_slots = min(options.realtime_slots, options.parallel - 1)
        self.prefixes = [PrefixEntry(seq_id=options.parallel + i, tokens=[], used_at=0.0)
                         for i in range(options.prefix_cache)]
        self.active: list[Sequence] = []
        self.waiting: list[Sequence] = []
        self.preemptions = 0  # real-time sequences that gave their slot back (for tests)
        self.order = itertools.count()
        self.cond = threading.Condition()
        self.running = True
        self.reserved_cells = 0
        self.piece = ctypes.create_string_buffer(256)
        self.masks: Masks | None = None  # made for the first constrained sequence
        self.thread = threading.Thread(target=self._loop, name="llamacpp-scheduler",
                                       daemon=True)
        self.thread.start()

    # --- handing work over ------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        with self.cond:
            if not self.running:  # stopped while the request was being prepared
                raise EngineFailure("The engine was shut down.")
            seq.order = next(self.order)
            self.waiting.append(seq)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        self.thread.join(timeout=30)
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.running and not self.waiting and not self.active:
                    self.cond.wait()
                if not self.running:
                    for seq in self.active + self.waiting:
                        seq.done(seq, EngineFailure("The engine was shut down."))
                    return
                self._admit()
            self._drop_cancelled()
            if self.active:
                try:
                    self._step()
                except Exception as exc:  # a broken step fails its sequences, not the engine
                    for seq in list(self.active):
                        self._release(seq, EngineFailure(f"llama.cpp failed: {exc}"))

    def _admit(self) -> None:
        """Start waiting sequences while a slot and KV room are free (most urgent first:
        real-time before batch, then the owner holding the fewest slots, then the oldest).

        A prompt that shares a long prefix with one still being evaluated waits for that
        evaluation to finish and then copies its KV cells, instead of computing the same
        prefix again beside it (a batch file's rows mostly share one system prompt)."""
        for seq in [s for s in self.waiting if s.cancelled.is_set()]:
            self.waiting.remove(seq)
            self.lib.llama_sampler_free(seq.sampler)
            seq.done(seq, asyncio.CancelledError())
        deferred: list[Sequence] = []
        while self.waiting:
            seq = self._next_waiting()
            victim = None if self.free_slots else self._victim_for(seq)
            if not self.free_slots and victim is None:
                break
            if seq.priority > Priority.REALTIME and len(self.free_slots) <= self.realtime_slots:
                break  # the last slots wait for real-time requests
            room = self.kv_tokens - self.reserved_cells - sum(len(p.tokens) for p in self.prefixes)
            lender, shared = self._best_prefix(seq)
            # Cells copied from a cached prefix are shared with it, not new: only the rest
            # of the prompt and the output need room.
            cost = len(seq.prompt) - shared + seq.max_new
            others = len(self.active) - (victim is not None)
            if cost > room + (victim.cost if victim else 0) and others:
                break  # wait for running sequences to free their cells
            self.waiting.remove(seq)
            if self._prefix_in_progress(seq):
                deferred.append(seq)
                continue
            if victim is not None:  # only now that `seq` takes its place at once
                self._preempt(victim)
            seq.seq_id = self.free_slots.pop()
            seq.cost = cost
            self.reserved_cells += cost
            if lender is not None:
                self._reuse_prefix(seq, lender, shared)
            self.active.append(seq)
        self.waiting.extend(deferred)

    def _held(self) -> dict[str, int]:
        """Real-time slots each owner holds."""
        held: dict[str, int] = {}
        for seq in self.active:
            if seq.priority == Priority.REALTIME:
                held[seq.owner] = held.get(seq.owner, 0) + 1
        return held

    def _next_waiting(self) -> Sequence:
        held = self._held()
        return min(self.waiting, key=lambda seq: (
            seq.priority, held.get(seq.owner, 0) if seq.priority == Priority.REALTIME else 0,
            seq.order))

    def _victim_for(self, seq: Sequence) -> Sequence | None:
        """The sequence to give its slot to real-time `seq` when every slot is taken: one of
        an owner holding more than its share (at least two more than `seq`'s owner), the
        one with the least generated (the least to recompute). Batch sequences are left
        alone (they pause while real-time work runs, and finish in turn)."""
        if seq.priority != Priority.REALTIME:
            return None
        held = self._held()
        mine = held.get(seq.owner, 0)
        greedy = max(held, key=lambda owner: held[owner], default=None)
        if greedy is None or greedy == seq.owner or held[greedy] < mine + 2:
            return None
        return min((s for s in self.active
                    if s.owner == greedy and s.priority == Priority.REALTIME),
                   key=lambda s: (len(s.generated), -s.order))

    def _preempt(self, victim: Sequence) -> None:
        """Back to waiting, its cells dropped: it prefills its prompt and what it generated
        again when it is admitted next (same sampler, same text so far)."""
        self._release_slot(victim)
        victim.n_past = 0
        victim.lender = None
        self.waiting.append(victim)
        self.preemptions += 1

    def _prefix_in_progress(self, seq: Sequence) -> bool:
        if not self.prefixes:
            return False
        minimum = self.options.prefix_min_tokens
        cached = max(_common_prefix(p.tokens, seq.prompt) for p in self.prefixes)
        # Only a prompt long enough to be kept (`_remember_prefix`) is worth waiting for,
        # and only for more than its last token (`_best_prefix`): the `n` choices of one
        # short prompt start side by side.
        return any(not other.prefilled and not other.generated
                   and len(other.prompt) >= minimum * 2
                   and min(_common_prefix(other.prompt, seq.prompt), len(seq.prompt) - 1)
                   >= max(minimum, cached + 1)
                   for other in self.active)

    def _best_prefix(self, seq: Sequence) -> tuple[PrefixEntry | None, int]:
        """The cached prefix to start `seq` from, and how many of its tokens to take."""
        best, best_len = None, 0
        for entry in self.prefixes:
            n = _common_prefix(entry.tokens, seq.prompt)
            if n > best_len:
                best, best_len = entry, n
        usable = min(best_len, len(seq.prompt) - 1)  # the last prompt token gives the logits
        if best is None or usable < self.options.prefix_min_tokens:
            return None, 0
        return best, usable

    def _reuse_prefix(self, seq: Sequence, lender: PrefixEntry, usable: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, lender.seq_id, seq.seq_id, 0, usable)
        lender.used_at = time.monotonic()
        seq.n_past = seq.shared = usable
        if not seq.generated:  # a preempted sequence's usage keeps its first admission's
            seq.reused = usable
        seq.lender = lender

    def _remember_prefix(self, seq: Sequence) -> None:
        """Keep this prompt's KV state for later requests, unless a kept one covers it."""
        if not self.prefixes or len(seq.prompt) < self.options.prefix_min_tokens * 2:
            return
        best = max((_common_prefix(p.tokens, seq.prompt) for p in self.prefixes), default=0)
        if best >= self.options.prefix_min_tokens:
            return
        entry = min(self.prefixes, key=lambda p: p.used_at)
        for borrower in self.active:
            if borrower.lender is entry:
                # Its shared cells outlive the entry: from now on they are its own to count.
                borrower.lender = None
                borrower.cost += borrower.shared
                self.reserved_cells += borrower.shared
                borrower.shared = 0
        self.lib.llama_memory_seq_rm(self.memory, entry.seq_id, -1, -1)
        self.lib.llama_memory_seq_cp(self.memory, seq.seq_id, entry.seq_id, 0, len(seq.prompt))
        entry.tokens, entry.used_at = list(seq.prompt), time.monotonic()

    def _drop_cancelled(self) -> None:
        for seq in list(self.active):
            if seq.cancelled.is_set():
                self._release(seq, asyncio.CancelledError())

    def _release(self, seq: Sequence, error: BaseException | None) -> None:
        self._release_slot(seq)
        self.lib.llama_sampler_free(seq.sampler)
        seq.done(seq, error)

    def _release_slot(self, seq: Sequence) -> None:
        self.active.remove(seq)
        self.lib.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
        self.free_slots.append(seq.seq_id)
        self.reserved_cells -= seq.cost
        seq.cost = seq.shared = 0

    def _step(self) -> None:
        """One decode: the next token of each generating sequence, then prompt tokens as the
        batch has room; then sample every sequence whose logits came out."""
        batch = self.batch
        budget = min(self.options.step_tokens, self.options.n_batch)
        n = 0
        added: dict[int, int] = {}
        wants_logits: list[tuple[Sequence, int]] = []

        def add(seq: Sequence, token: int, pos: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.seq_id
            batch.logits[n] = logits
            if logits:
                wants_logits.append((seq, n))
            added[seq.seq_id] = added.get(seq.seq_id, 0) + 1
            n += 1

        # While a real-time request is running, batch work pauses (its KV cells stay): a
        # decode step costs about as much per token at any width on a CPU, so sharing steps
        # would multiply the interactive latency by the number of batch requests.
        running = self.active
        if any(seq.priority == Priority.REALTIME for seq in running):
            running = [seq for seq in running if seq.priority == Priority.REALTIME]
        for seq in running:  # generation first: it keeps per-token latency flat
            if seq.prefilled and n < budget:
                add(seq, seq.generated[-1], seq.n_past, True)
        for seq in running:
            if not seq.prefilled and n < budget:
                tokens = seq.context
                # The prompt's last token gives the first output's logits; a preempted
                # sequence has its next token already and only rebuilds its cells.
                last = -1 if seq.generated else len(seq.prompt) - 1
                take = min(len(tokens) - seq.n_past, budget - n)
                for pos in range(seq.n_past, seq.n_past + take):
                    add(seq, tokens[pos], pos, pos == last)
        batch.n_tokens = n
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for seq in self.active:
            seq.n_past += added.get(seq.seq_id, 0)
        self._mask([(seq, idx) for seq, idx in wants_logits if seq.constrained])
        active = set(self.active)  # Sequence compares by identity
        for seq, idx in wants_logits:
            if seq not in active:
                continue  # its grammar failed (released by _mask)
            if not seq.generated:
                self._remember_prefix(seq)  # its whole prompt is in the cache now
            self._sample(seq, idx)
        for seq in [s for s in self.active if s.finish is not None]:
            self._release(seq, None)

    def _mask(self, rows: list[tuple[Sequence, int]]) -> None:
        """Disallow, in their logits, every token that would break a constrained sequence's
        grammar (all of this step's masks are computed together)."""
        if not rows:
            return
        if self.masks is None:
            self.masks = Masks(self.n_vocab, self.options.parallel)
        pointers = [(seq.matcher, self.lib.llama_get_logits_ith(self.ctx, idx))
                    for seq, idx in rows]
        try:
            self.masks.apply(pointers)
        except Exception:  # one matcher's fault must not fail the others: mask them alone
            for (seq, _), row in zip(rows, pointers, strict=True):
                try:
                    self.masks.apply([row])
                except Exception as exc:
                    self._release(seq, EngineFailure(f"constrained decoding failed: {exc}"))

    def _sample(self, seq: Sequence, idx: int) -> None:
        lib = self.lib
        if seq.logprobs is not None:
            logits = lib.llama_get_logits_ith(self.ctx, idx)
        token = lib.llama_sampler_sample(seq.sampler, self.ctx, idx)
        constrained = seq.constrained
        if constrained and not seq.matcher.consume_token(token):
            why = seq.matcher.get_error() or f"token {token} breaks the grammar"
            self._release(seq, EngineFailure(f"constrained decoding failed: {why}"))
            return
        if lib.llama_vocab_is_eog(self.vocab, token):  # not part of the output
            seq.finish = Finish.STOP
            self._flush(seq, final=True)
            return
        seq.generated.append(token)
        piece = self._piece(token)
        if seq.logprobs is not None:
            seq.token_logprobs.append(self._logprob_entry(logits, token, piece, seq.logprobs))
        seq.text += seq.decoder.decode(piece)
        if seq.think_end is not None and seq.thought is None and seq.think_end in seq.text:
            seq.thought = len(seq.generated)  # the answer (and its grammar) starts now
        if seq.stops and self._hit_stop(seq):
            seq.finish = Finish.STOP
        elif constrained and seq.matcher.is_stopped():
            seq.finish = Finish.STOP  # the grammar is complete and allows nothing more
        elif len(seq.generated) >= seq.max_new:
            seq.finish = Finish.LENGTH
        self._flush(seq, final=seq.finish is not None)

    def _piece(self, token: int) -> bytes:
        n = self.lib.llama_token_to_piece(self.vocab, token, self.piece, len(self.piece), 0,
                                          False)
        return bytes(self.piece.raw[:max(n, 0)])

    def _logprob_entry(self, logits: Any, token: int, piece: bytes,
                       top: int) -> dict[str, Any]:
        import numpy as np  # llama-cpp-python depends on it

        values = np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).astype(np.float64)
        peak = values.max()
        logprobs = values - (peak + math.log(np.exp(values - peak).sum()))

        def entry(tok: int, text: bytes) -> dict[str, Any]:
            # A token a grammar ruled out has no probability: OpenAI writes -9999.0.
            return {"token": text.decode("utf-8", "replace"),
                    "logprob": max(float(logprobs[tok]), -9999.0), "bytes": list(text)}

        best: list[int] = [int(t) for t in np.argsort(logprobs)[::-1][:top]] if top else []
        return {**entry(token, piece),
                "top_logprobs": [entry(t, self._piece(t)) for t in best]}

    def _hit_stop(self, seq: Sequence) -> bool:
        window = max(len(s) for s in seq.stops) + 16
        start = max(0, len(seq.text) - window)
        cut = min((i for s in seq.stops if (i := seq.text.find(s, start)) != -1),
                  default=-1)
        if cut == -1:
            return False
        seq.text = seq.text[:cut]
        return True

    def _flush(self, seq: Sequence, *, final: bool) -> None:
        """Stream new text, holding back what could still turn out to start a stop string."""
        if seq.quiet and not final:
            return
        hold = 0 if final or not seq.stops else max(len(s) for s in seq.stops) - 1
        upto = max(seq.emitted, len(seq.text) - hold)
        if upto > seq.emitted or final:
            logprobs = None
            if seq.logprobs is not None:  # the tokens not yet sent, with their text
                logprobs = seq.token_logprobs[seq.logprobs_sent:]
                seq.logprobs_sent = len(seq.token_logprobs)
            seq.emit(Delta(index=seq.index, text=seq.text[seq.emitted:upto],
                           finish_reason=seq.finish.value if final and seq.finish else None,
                           logprobs=logprobs))
            seq.emitted = upto


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
