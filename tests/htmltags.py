"""The start tags of an HTML text as a browser's parser sees them (for checks that a report is inert)."""

from __future__ import annotations

from html.parser import HTMLParser


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def start_tags(html: str) -> list[tuple[str, list]]:
    """``[(tag, [(attribute, value), ...]), ...]`` in document order."""
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags
