"""The README's tour as commands: every `sh` block under "## A tour", one command per entry.

The tour writes commands the way usage lines do: `[--json]` is an optional part and
`oci|docker-archive` a choice. A command runs as the reader would type its plainest form:
optional parts left out, the first choice taken. Comments, `\\` continuations and `;` between
commands are handled the way a shell would; quoted text is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOUR_HEADING = "## A tour"


@dataclass(frozen=True)
class TourCommand:
    block: int        # which sh block of the tour (0-based)
    line: int         # the README line it starts on (1-based)
    text: str         # as written, comments removed
    command: str      # what runs: optional parts dropped, first choices taken
    comment: str = "" # the line's comment: "refused..." says the command must fail


def _unquoted_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, quoted) pieces of a shell line; quotes are ' and "."""
    spans, start, quote = [], 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                spans.append((start, i + 1, True))
                start, quote = i + 1, ""
        elif ch in "'\"":
            if i > start:
                spans.append((start, i, False))
            start, quote = i, ch
    if start < len(text):
        spans.append((start, len(text), bool(quote)))
    return spans


def _map_unquoted(text: str, fn) -> str:
    return "".join(text[a:b] if q else fn(text[a:b]) for a, b, q in _unquoted_spans(text))


def split_comment(line: str) -> tuple[str, str]:
    """(the command part, the comment) of a shell line."""
    out = []
    for a, b, quoted in _unquoted_spans(line):
        piece = line[a:b]
        if not quoted:
            m = re.search(r"(^|\s)#", piece)
            if m:
                out.append(piece[:m.start()])
                return "".join(out).rstrip(), line[a + m.end():].strip()
        out.append(piece)
    return "".join(out).rstrip(), ""


def split_commands(line: str) -> list[str]:
    parts, cur = [], []
    for a, b, quoted in _unquoted_spans(line):
        piece = line[a:b]
        if quoted:
            cur.append(piece)
            continue
        chunks = piece.split(";")
        cur.append(chunks[0])
        for c in chunks[1:]:
            parts.append("".join(cur))
            cur = [c]
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _drop_optional(piece: str) -> str:
    while True:
        new = re.sub(r"\s*\[[^\[\]]*\]", "", piece)
        if new == piece:
            return new
        piece = new


def plainest(command: str) -> str:
    """The command with its optional parts dropped and the first of each choice taken."""
    out = _map_unquoted(command, _drop_optional)
    out = _map_unquoted(out, lambda p: re.sub(r"(?<=\S)\|\S+", "", p))
    return re.sub(r"[ \t]+", " ", out).strip()


def tour_blocks(readme: str) -> list[list[tuple[int, str, str]]]:
    """The tour's sh blocks as (README line number, logical line, its comment) lists."""
    lines = readme.splitlines()
    try:
        start = lines.index(TOUR_HEADING)
    except ValueError:
        raise AssertionError(f"README has no {TOUR_HEADING!r} section") from None
    blocks: list[list[tuple[int, str, str]]] = []
    cur: list[tuple[int, str, str]] | None = None
    pending: tuple[int, str, str] | None = None
    for n in range(start + 1, len(lines)):
        text = lines[n]
        if cur is None and text.startswith("## "):
            break
        if cur is None:
            if text.strip() == "```sh":
                cur = []
            continue
        if text.strip() == "```":
            blocks.append(cur)
            cur = None
            continue
        body, comment = split_comment(text)
        if pending is not None:
            pending = (pending[0], pending[1] + " " + body.strip(), pending[2] or comment)
        else:
            pending = (n + 1, body, comment)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip(), pending[2])
            continue
        if pending[1].strip():
            cur.append(pending)
        pending = None
    return blocks


def tour_commands(readme: str) -> list[TourCommand]:
    out = []
    for b, block in enumerate(tour_blocks(readme)):
        for line, text, comment in block:
            for cmd in split_commands(text):
                out.append(TourCommand(b, line, cmd, plainest(cmd), comment))
    return out
