"""What the preparation thread costs a request: a short chat's template and tokenizing run
inline (as before, on the event loop) and through the engine's preparation threads, the same
request 2,000 times each way, alternating for 3 rounds (default model, n_ctx 512).

    .venv/bin/python bench/preparation.py
"""

from __future__ import annotations

import asyncio
import time

from batchd.engines.llamacpp import LlamaCppEngine
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.openai.chat import ChatCompletionRequest


async def main() -> None:
    engine = LlamaCppEngine(LlamaCppOptions(n_ctx=512))
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Tell me one fact about owls."}]})
    n = 2000
    print(f"settings: default model, n_ctx 512, {n} preparations each way, 3 rounds")
    for number in range(3):
        started = time.perf_counter()
        for _ in range(n):
            engine._prompt(request)
        inline = (time.perf_counter() - started) / n
        started = time.perf_counter()
        for _ in range(n):
            await engine._preparation.run(lambda: engine._prompt(request))
        hop = (time.perf_counter() - started) / n
        print(f"round {number}: template and tokenize inline {inline * 1e6:.0f} us, on a "
              f"preparation thread {hop * 1e6:.0f} us: the thread adds "
              f"{(hop - inline) * 1e6:.0f} us a request (the event loop is free meanwhile)")
    await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
