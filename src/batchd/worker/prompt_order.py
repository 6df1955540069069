"""The order a chunk's requests run in: those that share a model and a leading prompt go to
the engine together, so its prefix cache serves them one after another instead of thrashing
between prompts. How a prompt begins is the endpoint's to say (`Operation.prompt_lead`)."""

from __future__ import annotations

from collections.abc import Callable

from batchd.serving.operation import Operation
from batchd.worker.inputs import Request


def prefix_key(operation: Operation) -> Callable[[Request], tuple[str, str]]:
    """(model, how its prompt begins), for sorting a chunk of `operation`'s requests."""

    def key(request: Request) -> tuple[str, str]:
        body = request[1]
        return str(body.get("model")), operation.prompt_lead(body)

    return key
