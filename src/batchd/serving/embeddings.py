"""/v1/embeddings: vectors for texts or token ids (there is no streamed form)."""

from __future__ import annotations

from typing import Any

from batchd.engines.base import Engine, Priority
from batchd.openai.embeddings import EmbeddingRequest, embedding_list_object, shorten
from batchd.serving.operation import Operation, Produced
from batchd.serving.prompts import text_tokens


def _estimate(body: dict[str, Any], request: EmbeddingRequest | None) -> int:
    return text_tokens(body.get("input"))


def _admit(request: EmbeddingRequest) -> int:
    request.inputs()  # no input at all, too many, an empty one...
    return 1


async def _run(engine: Engine, request: EmbeddingRequest, created: int,
               priority: Priority) -> Produced:
    inputs = request.inputs()
    result = await engine.embed(inputs, priority=priority)
    vectors = [shorten(v, inputs.dimensions) for v in result.vectors]
    body = embedding_list_object(model=request.model, vectors=vectors,
                                 encoding_format=request.encoding_format,
                                 prompt_tokens=result.prompt_tokens)
    return Produced(body=body, input_tokens=result.prompt_tokens)


EMBEDDINGS = Operation(endpoint="/v1/embeddings", title="Embeddings", capability="embeddings",
                       required="input", request_type=EmbeddingRequest, cost=_estimate,
                       admit=_admit, run=_run,
                       quick_cost=lambda body: _estimate(body, None),  # reads no field
                       counted=lambda request: request.inputs())
