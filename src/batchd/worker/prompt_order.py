"""The order a chunk's requests run in: those that share a model and a leading prompt go to
the engine together, so its prefix cache serves them one after another instead of thrashing
between prompts."""

from __future__ import annotations

from batchd.worker.inputs import Request

PROMPT_LEAD = 256  # characters of a text-completion prompt that group it


def prefix_key(request: Request) -> tuple[str, str]:
    """(model, how its prompt begins): what decides whether two prompts share a prefix. For
    chat, the first message; for responses, the instructions (or the first input); for text
    completions, the prompt's first characters (few-shot prompts share their examples)."""
    body = request[1]
    if "messages" in body:
        lead = _first_text(body.get("messages"))
    elif "instructions" in body or "input" in body:
        lead = body.get("instructions") or _first_text(body.get("input"))
    else:
        prompt = body.get("prompt")
        lead = prompt[:PROMPT_LEAD] if isinstance(prompt, str) else ""
    return str(body.get("model")), lead if isinstance(lead, str) else ""


def _first_text(items: object) -> object:
    if isinstance(items, str):
        return items
    first = items[0] if isinstance(items, list) and items else None
    return first.get("content") if isinstance(first, dict) else None
