"""What each served endpoint does with a request body, the same in real time and in a batch:
which kind of model serves it, how its body is read, what it may cost (for quotas), and how
one request runs on an engine into the endpoint's response object."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from batchd.engines.base import Capability, ChatResult, Engine, Priority
from batchd.openai.chat import ChatCompletionRequest, choice_object, completion_object
from batchd.openai.completions import (
    CompletionRequest,
    Prompt,
    completion_choice,
    legacy_logprobs,
    text_completion_object,
)
from batchd.openai.embeddings import EmbeddingRequest, embedding_list_object, shorten
from batchd.openai.responses import (
    ResponsesRequest,
    finished_status,
    in_responses_terms,
    new_ids,
    output_message,
    response_object,
    usage_object,
)

# For quotas: output tokens assumed for a request that sets no maximum.
DEFAULT_OUTPUT_TOKENS = 1024
CHOICES_AT_ONCE = 8  # of one /v1/completions request, in the engine at once


def prompts_at_once(n: int) -> int:
    """How many of a completions request's prompts run at once: 8 choices' worth (one prompt
    when `n` alone is more), so a request of 8 prompts x `n: 16` is not 128 sequences in the
    engine at once, ahead of everyone else's."""
    return max(1, CHOICES_AT_ONCE // n)


@dataclass(frozen=True, kw_only=True)
class Produced:
    """One request's response body and what it cost."""

    body: dict[str, Any]
    input_tokens: int
    output_tokens: int = 0
    cached_tokens: int = 0


Runner = Callable[[Engine, Any, int, Priority], Awaitable[Produced]]


@dataclass(frozen=True, kw_only=True)
class Operation:
    endpoint: str
    title: str  # as OpenAI names it in messages ("Chat Completions")
    capability: Capability
    required: str  # the body key every request must have besides `model`
    request_type: type[BaseModel]
    # Tokens a request may cost (its prompt, estimated, and the most output it may make),
    # from its body and the validated request (None: the body will not run, and costs no
    # output: a `"max_tokens": "4900000"` is never counted as one thing and run as another).
    cost: Callable[[dict[str, Any], Any], int]
    run: Runner  # (engine, validated request, created, priority) -> Produced

    def parse(self, body: dict[str, Any]) -> Any:
        """The validated request (pydantic's ValidationError for a bad body)."""
        return self.request_type.model_validate(body)

    def wrong_kind(self, model: str, capabilities: frozenset[str]) -> str:
        """Why `model`, which serves `capabilities`, cannot answer this endpoint."""
        kind = "an embeddings" if self.capability == "embeddings" else "a chat"
        serves = ", ".join(endpoints_for(capabilities)) or "nothing"
        return (f"The model '{model}' does not serve {self.endpoint} (it is not {kind} "
                f"model); it serves {serves}.")

    def estimate(self, body: dict[str, Any]) -> int:
        """For enqueued-token quotas: what `cost` says, read through the model that runs it."""
        try:
            request = self.parse(body)
        except ValidationError:
            request = None
        return self.cost(body, request)


def _text_tokens(value: object) -> int:
    """A tokenizer-free estimate: about 4 characters a token (token ids count one each), the
    same for every model; used only for enqueued-token quotas. Nesting of any depth is walked
    without recursion (a line may nest lists a thousand deep)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) // 4 + 1
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            total += 1
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.append(item.get("content") if "content" in item else item.get("text"))
    return total


def estimate_prompt_tokens(messages: object) -> int:
    """Chat messages' estimate: their text plus a few tokens each."""
    if not isinstance(messages, list):
        return 0
    return sum(4 + _text_tokens(m) for m in messages)


def _chat_estimate(body: dict[str, Any], request: ChatCompletionRequest | None) -> int:
    output = request.n * (request.output_limit or DEFAULT_OUTPUT_TOKENS) if request else 0
    return estimate_prompt_tokens(body.get("messages")) + output


def _completions_estimate(body: dict[str, Any], request: CompletionRequest | None) -> int:
    prompt = body.get("prompt")
    if request is None:
        return _text_tokens(prompt)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and \
        not all(isinstance(p, int) for p in prompt) else 1
    return _text_tokens(prompt) + prompts * request.n * (request.max_tokens or 0)


def _responses_estimate(body: dict[str, Any], request: ResponsesRequest | None) -> int:
    output = (request.max_output_tokens or DEFAULT_OUTPUT_TOKENS) if request else 0
    return _text_tokens(body.get("instructions")) + _text_tokens(body.get("input")) + output


def _embeddings_estimate(body: dict[str, Any], request: EmbeddingRequest | None) -> int:
    return _text_tokens(body.get("input"))


async def _run_chat(engine: Engine, request: ChatCompletionRequest, created: int,
                    priority: Priority) -> Produced:
    result = await engine.chat(request, priority=priority)
    body = completion_object(
        model=request.model, created=created,
        choices=[choice_object(index=i, text=c.text, finish_reason=c.finish_reason,
                               logprobs=c.logprobs) for i, c in enumerate(result.choices)],
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
        cached_tokens=result.cached_tokens)
    return Produced(body=body, input_tokens=result.prompt_tokens,
                    output_tokens=result.completion_tokens, cached_tokens=result.cached_tokens)


async def _run_completions(engine: Engine, request: CompletionRequest, created: int,
                           priority: Priority) -> Produced:
    prompts = request.check()
    # A few prompts at a time: a request of 2,048 prompts must not put them all ahead of
    # everyone else's requests in the engine's queue.
    room = asyncio.Semaphore(prompts_at_once(request.n))

    async def one(prompt: Prompt) -> ChatResult:
        async with room:
            return await engine.complete(request.one(prompt), priority=priority)

    tasks = [asyncio.ensure_future(one(p)) for p in prompts]
    try:  # the first failure is the request's, unchanged (a 400 stays a 400)
        results: list[ChatResult] = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    choices = []
    for p, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        echoed = prompt if request.echo and isinstance(prompt, str) else ""
        start = len(prompt) if isinstance(prompt, str) else 0
        for i, choice in enumerate(result.choices):
            logprobs = choice.logprobs
            if logprobs is not None and "content" in logprobs:  # chat format: convert
                logprobs = legacy_logprobs(logprobs["content"] or [], offset=start)
            choices.append(completion_choice(index=p * request.n + i,
                                             text=echoed + choice.text,
                                             finish_reason=choice.finish_reason,
                                             logprobs=logprobs))
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    body = text_completion_object(model=request.model, created=created, choices=choices,
                                  prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens, cached_tokens=cached)
    return Produced(body=body, input_tokens=prompt_tokens, output_tokens=completion_tokens,
                    cached_tokens=cached)


async def _run_responses(engine: Engine, request: ResponsesRequest, created: int,
                         priority: Priority) -> Produced:
    with in_responses_terms():
        result = await engine.chat(request.chat(), priority=priority)
    choice = result.choices[0]
    status = finished_status(choice.finish_reason)
    response_id, message_id = new_ids()
    body = response_object(
        request, response_id=response_id, created=created, status=status,
        completed_at=created if status == "completed" else None,
        output=[output_message(item_id=message_id, text=choice.text, status=status)],
        usage=usage_object(result.prompt_tokens, result.completion_tokens,
                           result.cached_tokens))
    return Produced(body=body, input_tokens=result.prompt_tokens,
                    output_tokens=result.completion_tokens, cached_tokens=result.cached_tokens)


async def _run_embeddings(engine: Engine, request: EmbeddingRequest, created: int,
                          priority: Priority) -> Produced:
    inputs = request.inputs()
    result = await engine.embed(inputs, priority=priority)
    vectors = [shorten(v, inputs.dimensions) for v in result.vectors]
    body = embedding_list_object(model=request.model, vectors=vectors,
                                 encoding_format=request.encoding_format,
                                 prompt_tokens=result.prompt_tokens)
    return Produced(body=body, input_tokens=result.prompt_tokens)


CHAT = Operation(endpoint="/v1/chat/completions", title="Chat Completions", capability="chat",
                 required="messages", request_type=ChatCompletionRequest,
                 cost=_chat_estimate, run=_run_chat)
COMPLETIONS = Operation(endpoint="/v1/completions", title="Completions", capability="chat",
                        required="prompt", request_type=CompletionRequest,
                        cost=_completions_estimate, run=_run_completions)
RESPONSES = Operation(endpoint="/v1/responses", title="Responses", capability="chat",
                      required="input", request_type=ResponsesRequest,
                      cost=_responses_estimate, run=_run_responses)
EMBEDDINGS = Operation(endpoint="/v1/embeddings", title="Embeddings",
                       capability="embeddings", required="input",
                       request_type=EmbeddingRequest, cost=_embeddings_estimate,
                       run=_run_embeddings)

OPERATIONS: dict[str, Operation] = {op.endpoint: op
                                    for op in (RESPONSES, CHAT, EMBEDDINGS, COMPLETIONS)}


def endpoints_for(capabilities: frozenset[str]) -> list[str]:
    return [op.endpoint for op in OPERATIONS.values() if op.capability in capabilities]
