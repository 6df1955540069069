"""A reasoning model's answer split into its thinking and its answer (the DeepSeek-R1 form:
`<think>…</think>` before the answer, the opening tag sometimes put in the prompt by the chat
template), whole or as it streams."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def thinks_first(prompt_text: str) -> bool:
    """Whether the chat template opened the thinking already (the answer starts inside it)."""
    return prompt_text.rstrip().endswith(OPEN)


def split(text: str, *, opened: bool) -> tuple[str | None, str]:
    """(thinking, answer) of a whole generated text. Without `</think>`, a text that began
    thinking is all thinking (cut short); one that did not is all answer."""
    stripped = text.lstrip()
    started = opened or stripped.startswith(OPEN)
    head, found, tail = text.partition(CLOSE)
    if not found:
        return (_without_open(text), "") if started else (None, text)
    return _without_open(head), tail.lstrip()


def _without_open(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(OPEN):].lstrip("\n") if stripped.startswith(OPEN) else text.lstrip("\n")


class Splitter:
    """`split`, as the text arrives: each piece becomes (thinking, answer) pieces, holding
    back what could still be the start of `</think>`."""

    def __init__(self, *, opened: bool) -> None:
        self._opened = opened
        self._seen = ""  # all text so far
        self._sent_thinking = 0  # of the thinking so far, what was handed out
        self._sent_answer = 0
        self._closed = False

    def feed(self, piece: str, *, final: bool = False) -> tuple[str, str]:
        self._seen += piece
        thinking, answer = split(self._seen, opened=self._opened)
        if thinking is None:  # an answer without thinking: nothing to hold back
            if not final and OPEN.startswith(self._seen.lstrip()):
                return "", ""  # it may still open with <think>
            return "", self._take_answer(answer)
        if not final and CLOSE not in self._seen:
            thinking = _hold_partial(thinking, CLOSE)
        out_thinking = thinking[self._sent_thinking:]
        self._sent_thinking = max(self._sent_thinking, len(thinking))
        return out_thinking, self._take_answer(answer)

    def _take_answer(self, answer: str) -> str:
        out = answer[self._sent_answer:]
        self._sent_answer = len(answer)
        return out


def _hold_partial(text: str, tag: str) -> str:
    """`text` without a tail that could be the first characters of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return text[:-n]
    return text
