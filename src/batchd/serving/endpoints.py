"""The served endpoints, and the one place a request's model is looked up for an endpoint:
the real-time API and the batch worker both go through `find_engine`."""

from __future__ import annotations

from batchd.engines.base import Engine
from batchd.engines.registry import ModelRegistry
from batchd.errors import InvalidRequest
from batchd.serving.chat import CHAT
from batchd.serving.completions import COMPLETIONS
from batchd.serving.embeddings import EMBEDDINGS
from batchd.serving.operation import Operation
from batchd.serving.responses import RESPONSES

OPERATIONS: dict[str, Operation] = {op.endpoint: op
                                    for op in (RESPONSES, CHAT, EMBEDDINGS, COMPLETIONS)}


def endpoints_for(capabilities: frozenset[str]) -> list[str]:
    return [op.endpoint for op in OPERATIONS.values() if op.capability in capabilities]


def wrong_kind(operation: Operation, model: str, capabilities: frozenset[str]) -> str:
    """Why `model`, which serves `capabilities`, cannot answer `operation`'s endpoint."""
    kind = "an embeddings" if operation.capability == "embeddings" else "a chat"
    serves = ", ".join(endpoints_for(capabilities)) or "nothing"
    return (f"The model '{model}' does not serve {operation.endpoint} (it is not {kind} "
            f"model); it serves {serves}.")


def find_engine(registry: ModelRegistry, model: str, operation: Operation) -> Engine:
    """The engine serving `model` for `operation`'s endpoint: a 404 for an unknown model, a
    400 naming the endpoint for a model of another kind."""
    entry = registry.entry(model)
    if operation.capability not in entry.capabilities:
        raise InvalidRequest(wrong_kind(operation, model, entry.capabilities),
                             code="model_not_found", param="model")
    return registry.engine_for(model)
