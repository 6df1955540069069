"""Printing what the server sends to a person's terminal, safely and whole.

File names, metadata, error messages and even ids come from the server, and through it from
other people (an admin lists every tenant's files). A terminal obeys the control characters
in what it prints: an escape sequence can recolour or clear the screen, retitle the window,
rewrite earlier lines or, on some terminals, answer back as if typed. So every such string is
shown with its control characters escaped (`\\x1b`, `\\u202e`), never obeyed: C0 and C1
controls, DEL, Unicode format characters (bidi overrides, zero-width ones) and line or
paragraph separators. Escaping, not dropping, keeps what was sent visible.

Tables never shorten ids (a cut id cannot be pasted back into a command): other columns wrap
instead, and a terminal too narrow for that gets one block per row.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Controls (C0, DEL, C1), format characters (bidi overrides, zero-width), line and paragraph
# separators, and lone surrogates (which could not even be encoded for the terminal).
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _escaped(ch: str) -> str:
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: object) -> str:
    """`value` as text that prints as itself: every control or format character escaped."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to escape
    return "".join(_escaped(ch) for ch in text)


def safe_text(value: object, style: str = "") -> Text:
    """A rich Text of `value`, escaped (Text is never read as markup)."""
    return Text(safe(value), style=style)


# Columns are set apart by two spaces (one of padding, a blank divider) and the table has
# no outer frame: the width goes to the values.
_GAP = 2
_FREE_TEXT_MIN = 8


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[object]],
                *, id_column: int = 0, free_text: Sequence[str] = ()) -> None:
    """A table whose `id_column` is always printed whole, on one line. The other columns
    wrap (nothing is cut) to fit the terminal, the `free_text` ones (names, metadata) first;
    if even that cannot fit, each row is printed as a block: its id on a line of its own,
    then one `name: value` line per column."""
    cells = [[safe(value) for value in row] for row in rows]
    columns = [[header, *(row[n] for row in cells)] for n, header in enumerate(headers)]
    budget = console.width - _GAP * (len(headers) - 1)
    widths = _widths(columns, id_column, [h in free_text for h in headers], budget)
    if widths is None:
        _print_blocks(console, headers, cells, id_column=id_column)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for n, header in enumerate(headers):
        if n == id_column:
            table.add_column(header, no_wrap=True, width=widths[n])
        else:
            table.add_column(header, overflow="fold", width=widths[n])
    for row in cells:
        table.add_row(*(Text(value) for value in row))
    console.print(table)


def _widths(columns: Sequence[Sequence[str]], id_column: int, free_text: Sequence[bool],
            budget: int) -> list[int] | None:
    """Each column's width within `budget`, or None if the ids, the other headers' words and
    a few characters of free text cannot fit. The id column gets its longest value, the
    others their header's longest word (free text a little more); then, as room allows (the
    smallest needs first), the other columns get their values' longest word (a status, a
    date without its time), then their longest value, then the free-text columns theirs."""
    def longest_word(texts: Sequence[str]) -> int:
        return max((len(word) for text in texts for word in text.split()), default=1)

    def longest(texts: Sequence[str]) -> int:
        return max((len(text) for text in texts), default=1)

    widths = [longest(c) if n == id_column else longest_word(c[:1])
              for n, c in enumerate(columns)]
    # A free-text column narrower than this reads as a column of letters: blocks read better.
    widths = [max(w, min(longest(c), _FREE_TEXT_MIN)) if free else w
              for w, c, free in zip(widths, columns, free_text, strict=True)]
    room = budget - sum(widths)
    if room < 0:
        return None
    fixed = [not free for free in free_text]
    for goal in ([longest_word(c) if f else 0 for c, f in zip(columns, fixed, strict=True)],
                 [longest(c) if f else 0 for c, f in zip(columns, fixed, strict=True)],
                 [longest(c) for c in columns]):
        for need, n in sorted((goal[n] - widths[n], n) for n in range(len(columns))
                              if goal[n] > widths[n]):
            give = min(need, room)
            widths[n] += give
            room -= give
    return widths


def _print_blocks(console: Console, headers: Sequence[str], cells: Sequence[Sequence[str]],
                  *, id_column: int) -> None:
    # Soft-wrapped: rich neither folds nor crops these lines; the terminal wraps a long one
    # itself, so an id stays one piece of text to select and copy.
    for n, row in enumerate(cells):
        if n:
            console.print()
        console.print(Text(row[id_column], style="bold"), soft_wrap=True)
        for i, (header, value) in enumerate(zip(headers, row, strict=True)):
            if i != id_column:
                console.print(Text(f"  {header}: {value}"), soft_wrap=True)
