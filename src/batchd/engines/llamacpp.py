"""The llama.cpp engine (llama-cpp-python): a GGUF file served on CPU or GPU. It turns requests
into token prompts (chat templates, tokenizing, off the event loop) and samplers, and hands
them to the continuous-batching scheduler (`llamacpp_scheduler.py`) for generation and to
the embedder (`llamacpp_embedder.py`) for vectors."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batchd.engines import llamacpp_chat, reasoning
from batchd.engines.base import (
    ChatResult,
    Choice,
    Delta,
    EmbeddingResult,
    EngineFailure,
    EngineRequestError,
    EngineUnavailable,
    Priority,
    StreamEvent,
    Usage,
)
from batchd.engines.constraints import Grammars
from batchd.engines.llamacpp_embedder import Embedder
from batchd.engines.llamacpp_options import LlamaCppOptions, default_model_path
from batchd.engines.llamacpp_scheduler import Finish, Scheduler, Sequence
from batchd.limits.preparation import Preparation, work_owner
from batchd.openai.chat import ChatCompletionRequest
from batchd.openai.completions import CompletionRequest
from batchd.openai.embeddings import EmbeddingInputs
from batchd.openai.sampling import Sampling


@functools.cache
def _close_devnull_at_exit() -> None:
    """llama-cpp-python opens two /dev/null files when imported and never closes them, so every
    process that loaded it ended with two ResourceWarnings: close them on the way out."""
    from llama_cpp import _utils

    atexit.register(_utils.outnull_file.close)
    atexit.register(_utils.errnull_file.close)


class LlamaCppEngine:
    def __init__(self, options: LlamaCppOptions, *,
                 serves: frozenset[str] = frozenset({"chat"})) -> None:
        """Loads what `serves` needs: a generating context for chat, an embedding context
        for embeddings (or both, sharing nothing but the file)."""
        _close_devnull_at_exit()
        self.options = options
        self.n_ctx = options.n_ctx
        path = options.model_path or default_model_path()
        self._embedder: Embedder | None = None
        self._scheduler: Scheduler | None = None
        self._preparation = Preparation()  # templates and tokenizing, off the event loop
        self._counting = _Users()  # other threads counting tokens with the model (estimates)
        if "embeddings" in serves:
            self._embedder = Embedder(path, options, self._preparation)
        if "chat" in serves:
            self._load_generator(path)

    def _load_generator(self, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        options = self.options
        # This Llama object loads the weights and tokenizes; its own small context is unused.
        self._llama: Any = Llama(model_path=str(path), n_ctx=256, n_batch=32,
                                 n_gpu_layers=options.n_gpu_layers, verbose=False)
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise EngineFailure(f"{path.name} has no chat template in its metadata")
        model = self._llama._model
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        self._format: Any = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "")
        self._n_vocab: int = self._llama.n_vocab()
        # Templates that render tools themselves (Hermes, Qwen, Llama 3.1, Mistral) get
        # them; others get them described in a system message (engines/llamacpp_chat.py).
        self._template_tools = "tools" in template
        self._scheduler = Scheduler(self._llama, options)
        self._grammars = Grammars(self._scheduler.vocab)

    # --- request → sequences ----------------------------------------------------------------

    def _prompt(self, request: ChatCompletionRequest) -> Prepared:
        """The chat's prompt tokens, and what its answer must follow (compiled here, off the
        event loop: a new schema takes milliseconds to compile)."""
        chat, tokens, thinks = self._chat_tokens(request)
        matchers = None
        if chat.constraint is not None:
            matchers = [self._grammars.matcher(chat.constraint) for _ in range(request.n)]
        return Prepared(tokens=self._fits(tokens, "messages"), chat=chat, matchers=matchers,
                        reasoning=thinks)

    def count_tokens(self, request: ChatCompletionRequest | CompletionRequest | EmbeddingInputs,
                     ) -> int | None:
        """The prompt's tokens as this model reads them: its tokenizer, after its chat
        template (for a batch input file's estimate). The model is not freed meanwhile."""
        with self._counting.use():
            if isinstance(request, EmbeddingInputs):
                if self._embedder is None:
                    return None
                return sum(len(tokens) for tokens in self._embedder.tokens_of(request))
            self._generator()
            if isinstance(request, ChatCompletionRequest):
                return len(self._chat_tokens(request)[1])
            return sum(len(self._raw_prompt(prompt)) for prompt in request.prompts())

    def _chat_tokens(self, request: ChatCompletionRequest,
                     ) -> tuple[llamacpp_chat.ChatPlan, list[int], bool]:
        chat = llamacpp_chat.plan(request, template_tools=self._template_tools)
        try:
            text = self._format(messages=chat.messages, tools=chat.tools).prompt
        except EngineRequestError:
            raise
        except Exception as exc:
            raise EngineRequestError(f"The messages do not fit the model's chat template: "
                                     f"{exc}", code="invalid_value", param="messages") from exc
        thinks = False
        if self.options.reasoning is not None:
            text, thinks = reasoning.thinking_prompt(text)
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=True,
                                                 special=True)
        return chat, tokens, thinks

    def _raw_prompt(self, prompt: str | list[int]) -> list[int]:
        """A completions prompt as it is: no chat template, special tokens as plain text."""
        if isinstance(prompt, list):
            if max(prompt) >= self._n_vocab:
                raise EngineRequestError(f"Invalid 'prompt': token ids must be below the "
                                         f"model's vocabulary size ({self._n_vocab}).",
                                         code="invalid_value", param="prompt")
            return self._fits(list(prompt), "prompt")
        tokens: list[int] = self._llama.tokenize(prompt.encode("utf-8"), add_bos=True,
                                                 special=False)
        return self._fits(tokens, "prompt")

    def _fits(self, tokens: list[int], param: str) -> list[int]:
        if not tokens:  # a model that adds no BOS token: nothing to continue from
            raise EngineRequestError(f"Invalid '{param}': it is empty (no tokens).",
                                     code="invalid_value", param=param)
        if len(tokens) >= self.n_ctx:
            what = "messages" if param == "messages" else "prompt"
            raise EngineRequestError(
                f"This model's maximum context length is {self.n_ctx} tokens; the {what} "
                f"are {len(tokens)} tokens.", code="context_length_exceeded", param=param)
        return tokens

    def _sampler(self, request: Sampling, seed: int) -> Any:
        import llama_cpp as lib

        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if request.frequency_penalty or request.presence_penalty:
            # The binding's signature (it also takes the vocabulary size), called as
            # llama-cpp-python's own sampler does: penalise the last 64 tokens.
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(
                self._n_vocab, 64, 1.0, request.frequency_penalty or 0.0,
                request.presence_penalty or 0.0))
        temperature = 1.0 if request.temperature is None else request.temperature
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if request.top_p is not None and request.top_p < 1:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(request.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _generator(self) -> Scheduler:
        if self._scheduler is None:  # the registry routes only what a model serves
            raise EngineRequestError("This model does not generate text.",
                                     code="model_not_found", param="model")
        return self._scheduler

    async def _sequences(self, prompt: Callable[[], Prepared], sampling: Sampling,
                         priority: Priority, emit: Callable[[Delta], None],
                         done: Callable[[Sequence, BaseException | None], None],
                         cancelled: threading.Event) -> tuple[Prepared, list[Sequence]]:
        self._generator()
        limit = sampling.max_tokens
        if limit is not None and limit > self.n_ctx:
            param = sampling.max_tokens_param
            raise EngineRequestError(
                f"{param} is too large: {limit}. This model's context holds at most "
                f"{self.n_ctx} tokens, prompt and completion together.",
                code="invalid_value", param=param)
        prepared = await self._preparation.run(prompt)
        tokens = prepared.tokens
        room = self.n_ctx - len(tokens)
        max_new = min(room if limit is None else limit, room)
        base = sampling.seed if sampling.seed is not None else random.randrange(2**31)
        owner = work_owner.get()
        think_end = reasoning.CLOSE if prepared.reasoning else None
        return prepared, [
            Sequence(prompt=tokens, sampler=self._sampler(sampling, (base + i) % 2**31),
                     max_new=max_new, stops=list(sampling.stops), priority=int(priority),
                     index=i, owner=owner, emit=emit, done=done, cancelled=cancelled,
                     logprobs=sampling.top_logprobs,
                     matcher=prepared.matchers[i] if prepared.matchers else None,
                     think_end=think_end, thought=None if think_end else 0,
                     quiet=prepared.calls_tools)
            for i in range(sampling.n)]

    # --- the async face ---------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, *,
                   priority: Priority = Priority.REALTIME) -> ChatResult:
        return await self._generate(lambda: self._prompt(request), request.sampling(),
                                    priority)

    async def complete(self, request: CompletionRequest, *,
                       priority: Priority = Priority.REALTIME) -> ChatResult:
        self._generator()
        if request.max_tokens == 0:  # nothing to generate: only the prompt is counted
            tokens = await self._preparation.run(lambda: self._raw_prompt(request.single))
            return ChatResult(choices=[Choice(text="", finish_reason="length")] * request.n,
                              prompt_tokens=len(tokens), completion_tokens=0)
        return await self._generate(lambda: Prepared(tokens=self._raw_prompt(request.single)),
                                    request.sampling(), priority)

    async def embed(self, inputs: EmbeddingInputs, *,
                    priority: Priority = Priority.REALTIME) -> EmbeddingResult:
        if self._embedder is None:  # the registry routes only what a model serves
            raise EngineRequestError("This model does not serve embeddings.",
                                     code="model_not_found", param="model")
        return await self._embedder.embed(inputs, priority=priority)

    async def _generate(self, prompt: Callable[[], Prepared], sampling: Sampling,
                        priority: Priority) -> ChatResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        cancelled = threading.Event()
        remaining = sampling.n
        failure: list[BaseException] = []
        scheduler = self._generator()

        def done(seq: Sequence, error: BaseException | None) -> None:
            def settle() -> None:
                nonlocal remaining
                if error is not None:
                    failure.append(error)
                remaining -= 1
                if remaining == 0 and not future.done():
                    future.set_result(None)
            _post(loop, settle)

        prepared, seqs = await self._sequences(prompt, sampling, priority, lambda delta: None,
                                               done, cancelled)
        for seq in seqs:
            scheduler.submit(seq)
        try:
            await future
        except asyncio.CancelledError:
            cancelled.set()
            raise
        if failure:
            raise failure[0]
        choices = [prepared.choice(s) for s in seqs]
        return ChatResult(
            choices=choices, prompt_tokens=len(seqs[0].prompt),
            completion_tokens=sum(_output_tokens(s) for s in seqs),
            cached_tokens=seqs[0].reused,
            reasoning_tokens=sum(prepared.reasoning_tokens(s) for s in seqs))

    def chat_stream(self, request: ChatCompletionRequest, *,
                    priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        return self._generate_stream(lambda: self._prompt(request), request.sampling(),
                                     priority)

    def complete_stream(self, request: CompletionRequest, *,
                        priority: Priority = Priority.REALTIME) -> AsyncIterator[StreamEvent]:
        return self._generate_stream(lambda: Prepared(tokens=self._raw_prompt(request.single)),
                                     request.sampling(), priority)

    async def _generate_stream(self, prompt: Callable[[], Prepared], sampling: Sampling,
                               priority: Priority) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()
        remaining = sampling.n

        def emit(delta: Delta) -> None:
            _post(loop, queue.put_nowait, delta)

        def done(seq: Sequence, error: BaseException | None) -> None:
            _post(loop, queue.put_nowait, error)

        scheduler = self._generator()
        prepared, seqs = await self._sequences(prompt, sampling, priority, emit, done,
                                               cancelled)
        for seq in seqs:
            scheduler.submit(seq)
        pieces = prepared.pieces(len(seqs))
        try:
            while remaining:
                event = await queue.get()
                if event is None:
                    remaining -= 1
                elif isinstance(event, BaseException):
                    raise event
                else:
                    event = pieces(event)
                    if (event.text or event.reasoning or event.tool_calls
                            or event.finish_reason or event.logprobs):
                        yield event
            yield Usage(prompt_tokens=len(seqs[0].prompt),
                        completion_tokens=sum(_output_tokens(s) for s in seqs),
                        cached_tokens=seqs[0].reused,
                        reasoning_tokens=sum(prepared.reasoning_tokens(s) for s in seqs))
        finally:
            cancelled.set()

    def capacity(self) -> int:
        # Its slots, and as many requests ready behind them, so a freed slot never waits
        # for the worker to send the next one.
        return 2 * self.options.parallel

    def max_capacity(self) -> int:
        return self.capacity()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._preparation.close)  # nothing tokenizes any more
        await asyncio.to_thread(self._counting.close)
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
            await asyncio.to_thread(self._llama.close)
        if self._embedder is not None:
            await asyncio.to_thread(self._embedder.close)


class _Users:
    """Threads of others' using the model (an estimate counting tokens): the model is freed
    only once they are done, and none starts after that (a restart, a shutdown)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._users = 0
        self._closed = False

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        with self._changed:
            if self._closed:
                raise EngineUnavailable("The engine is being shut down or restarted.")
            self._users += 1
        try:
            yield
        finally:
            with self._changed:
                self._users -= 1
                self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.wait_for(lambda: self._users == 0)


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand a result to the event loop that asked for it, if it still runs."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # that loop is closed: nobody waits for this any more
        pass


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A request made ready to generate: its prompt tokens and, for a chat, how its answer
    is constrained and read (tool calls, a reasoning model's thinking)."""

    tokens: list[int]
    chat: llamacpp_chat.ChatPlan | None = None
    matchers: list[Any] | None = None  # one per choice, for a constrained answer
    reasoning: bool = False  # the answer starts inside the thinking (reasoning.thinking_prompt)

    @property
    def calls_tools(self) -> bool:
        return self.chat is not None and self.chat.tool_mode != "none"

    def split(self, text: str) -> tuple[str | None, str]:
        return reasoning.split(text, opened=True) if self.reasoning else (None, text)

    def reasoning_tokens(self, seq: Sequence) -> int:
        if not self.reasoning:
            return 0
        thinking, _ = self.split(seq.text)
        if thinking is None:
            return 0
        return seq.thought if seq.thought is not None else _output_tokens(seq)

    def choice(self, seq: Sequence) -> Choice:
        """The whole answer of one finished sequence."""
        finish = (seq.finish or Finish.STOP).value
        thinking, answer = self.split(seq.text)
        logprobs = ({"content": seq.token_logprobs, "refusal": None}
                    if seq.logprobs is not None else None)
        calls = self._calls(answer, finish)
        if calls is not None:
            return Choice(text="", tool_calls=calls, reasoning=thinking, logprobs=logprobs,
                          finish_reason=self._calls_finish())
        return Choice(text=answer, reasoning=thinking, finish_reason=finish,
                      logprobs=logprobs)

    def _calls(self, answer: str, finish: str) -> list[dict[str, Any]] | None:
        if self.chat is None or finish != Finish.STOP.value:
            return None  # a call cut short is left as text
        return llamacpp_chat.tool_calls_of(answer, self.chat)

    def _calls_finish(self) -> str:
        # OpenAI ends a call of the named function with "stop", a call it chose "tool_calls".
        return "stop" if self.chat and self.chat.tool_mode == "function" else "tool_calls"

    def pieces(self, n: int) -> Callable[[Delta], Delta]:
        """What each streamed piece of text becomes: thinking and answer apart, and a tool
        answer (sent whole, once finished) as its calls."""
        splitters = ([reasoning.Splitter(opened=True) for _ in range(n)]
                     if self.reasoning else None)
        texts = [""] * n

        def piece(delta: Delta) -> Delta:
            final = delta.finish_reason is not None
            thinking, answer = "", delta.text
            if splitters is not None:
                thinking, answer = splitters[delta.index].feed(delta.text, final=final)
            if not self.calls_tools:
                return replace(delta, text=answer, reasoning=thinking)
            texts[delta.index] += answer
            calls = self._calls(texts[delta.index], delta.finish_reason or "")
            if calls is None:
                return replace(delta, text=answer, reasoning=thinking)
            return replace(delta, text="", reasoning=thinking,
                           finish_reason=self._calls_finish(),
                           tool_calls=[{"index": k, **call} for k, call in enumerate(calls)])

        return piece


def _output_tokens(seq: Sequence) -> int:
    """Generated tokens (an end-of-generation token is never among them)."""
    return len(seq.generated)
