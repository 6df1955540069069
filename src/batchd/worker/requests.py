"""Running one batch request on an engine and turning the outcome into an output line."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from batchd.batches import results
from batchd.clock import Clock
from batchd.engines.base import EngineUnavailable, Priority
from batchd.engines.registry import ModelRegistry
from batchd.errors import BatchdError, InvalidRequest, invalid_request_of
from batchd.serving.chat import CHAT
from batchd.serving.endpoints import find_engine
from batchd.serving.operation import Operation
from batchd.worker.watchdog import Guard

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)  # not frozen: one per request (see engines/base.Choice)
class Outcome:
    line: bytes
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


async def run_request(
    *, custom_id: str, body: dict[str, Any], registry: ModelRegistry, clock: Clock,
    guard: Guard, retries: int = 1, operation: Operation = CHAT,
) -> Outcome:
    """Never raises for a bad request or a failing engine: every failure is a line, except
    `EngineUnavailable` (the engine cannot be reached: the request did not fail, it waits).
    `guard` (the calling lane's) bounds each attempt's time."""

    model = str(body.get("model"))
    try:
        engine = find_engine(registry, model, operation)  # served still, for this endpoint
        request = operation.parse(body)
        if getattr(request, "stream", None):
            return _http_error(custom_id, 400, "Streaming is not supported in the Batch API.",
                               code="streaming_unsupported", param="stream")
        operation.admit(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        invalid = invalid_request_of(first, first["loc"])
        return _http_error(custom_id, 400, invalid.message, code=invalid.code, param=invalid.param)
    except BatchdError as exc:
        return _http_error(custom_id, exc.status_code, exc.message, code=exc.code, param=exc.param)
    for attempt in range(1, retries + 2):
        if attempt > 1:
            engine = find_engine(registry, model, operation)  # a restart may have replaced it
        try:
            async with guard:
                produced = await operation.run(engine, request, int(clock.now()),
                                               Priority.BATCH)
            break
        except TimeoutError:
            await registry.restart(model, engine)  # a hung engine serves nobody else
            if attempt > retries:
                return Outcome(ok=False, line=results.stop_error_line(
                    custom_id, code="request_timeout",
                    message=f"The request did not finish within {guard.timeout:g} seconds "
                            f"({attempt} attempts)."))
        except InvalidRequest as exc:  # the engine's refusal, or the body's own mistake
            return _http_error(custom_id, exc.status_code, exc.message, code=exc.code,
                               param=exc.param)
        except EngineUnavailable:
            raise  # not this request's fault: it waits for the engine (worker/capacity.py)
        except Exception as exc:
            log.warning("engine failed on a batch request (attempt %d): %r", attempt, exc)
            if attempt > retries:
                status = exc.status_code if isinstance(exc, BatchdError) else 500
                return _http_error(custom_id, status,
                                   f"The engine failed on this request: {exc}",
                                   error_type="server_error", code="engine_error")
    return Outcome(ok=True, line=results.success_line(custom_id, produced.body),
                   input_tokens=produced.input_tokens, output_tokens=produced.output_tokens,
                   cached_tokens=produced.cached_tokens)


def _http_error(custom_id: str, status: int, message: str, *,
                error_type: str = "invalid_request_error", code: str | None = None,
                param: str | None = None) -> Outcome:
    return Outcome(ok=False, line=results.http_error_line(
        custom_id, status_code=status, message=message, error_type=error_type,
        code=code, param=param))
