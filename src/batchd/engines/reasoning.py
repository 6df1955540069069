"""A reasoning model's answer split into its thinking and its answer (the DeepSeek-R1 form:
`<think>…</think>` before the answer, the opening tag sometimes put in the prompt by the chat
template), whole or as it streams."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def thinking_prompt(prompt_text: str) -> tuple[str, bool]:
    """The prompt a reasoning model answers, and whether it thinks first. A template that
    opened the thinking (`<think>` last) is kept; one that closed it empty (thinking switched
    off, as Qwen3's `enable_thinking: false` does) means no thinking; otherwise the prompt
    opens it, as DeepSeek advises for R1 (the model then always thinks before it answers, and
    a grammar never meets an answer that skipped it)."""
    tail = prompt_text.rstrip()
    if tail.endswith(OPEN):
        return prompt_text, True
    if tail.endswith(CLOSE):
        return prompt_text, False
    return f"{prompt_text}{OPEN}\n", True


def split(text: str, *, opened: bool) -> tuple[str | None, str]:
    """(thinking, answer) of a whole generated text. A text that did not begin thinking
    (`opened`, or `<think>` first) is all answer; one that did, without `</think>`, is all
    thinking (cut short)."""
    if not (opened or text.lstrip().startswith(OPEN)):
        return None, text
    head, found, tail = text.partition(CLOSE)
    if not found:
        return _without_open(text), ""
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
        if not final and OPEN.startswith(self._seen.lstrip()):
            return "", ""  # it may still be an opening `<think>`, which is not thinking
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
