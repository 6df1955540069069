"""Reading a request's prompt from its raw body, before (or without) validating it: a line of a
batch file may have any shape. For quotas, a tokenizer-free estimate of what it costs; for
the worker's ordering, how it begins."""

from __future__ import annotations

from typing import TypeGuard


def text_tokens(value: object) -> int:
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


def plain_count(value: object, *, least: int, most: int | None = None) -> TypeGuard[int]:
    """Whether a JSON value is an int (not a bool, not a float) in [least, most]: what a
    strict integer field holds as sent."""
    return type(value) is int and value >= least and (most is None or value <= most)


def first_text(items: object) -> str:
    """The text of a string, or of a list's first message (`content` as a string)."""
    if isinstance(items, str):
        return items
    first = items[0] if isinstance(items, list) and items else None
    content = first.get("content") if isinstance(first, dict) else None
    return content if isinstance(content, str) else ""
