"""Section headings of Markdown documents, with the offset of each heading's line in the text.

``context: heading_path`` prefixes a chunk with its document's title and the headings it sits
under ("contextual chunk headers"). The headings come from the source format: Markdown here (ATX
``#`` and setext underlines, parsed by markdown-it-py, so ``#`` lines inside fenced code are not
headings), HTML from the ingestion reader (``workbench/data/ingest.py``), which knows the tags.
"""

from __future__ import annotations

from collections.abc import Sequence

from markdown_it import MarkdownIt

from .types import Heading

MARKDOWN_SUFFIXES = (".md", ".markdown")


def markdown_headings(text: str) -> tuple[Heading, ...]:
    """Every heading of a Markdown text: (offset of its first line, level, inline text)."""
    line_starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            line_starts.append(i + 1)
    tokens = MarkdownIt("commonmark").parse(text)
    out = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None and i + 1 < len(tokens):
            title = " ".join(tokens[i + 1].content.split())
            if title:
                out.append(Heading(line_starts[tok.map[0]], int(tok.tag[1]), title))
    return tuple(out)


def heading_path(headings: Sequence[Heading], offset: int) -> list[str]:
    """The headings a character at ``offset`` sits under, outermost first (a heading whose line
    starts at or before ``offset`` opens its section; a later heading of the same or a higher
    level closes it)."""
    stack: list[Heading] = []
    for h in headings:
        if h.start > offset:
            break
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
    return [h.text for h in stack]
