"""What the documentation tests read in a Markdown page: its headings and anchors, its links, its tables.

Fenced code blocks are skipped (a `# comment` in a bash block is no heading); inline code spans are kept as
text in headings and cells, and never hold links.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^()\s]+)\)")
CODE_SPAN = re.compile(r"`([^`]*)`")
CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    in_block = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif not in_block:
            yield number, line


def heading_text(markdown: str) -> str:
    """A heading as it reads: code spans, emphasis and links reduced to their text."""
    text = CODE_SPAN.sub(r"\1", markdown)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return text.replace("**", "").replace("\\", "")


def site_slug(heading: str) -> str:
    """The anchor mkdocs gives a heading (Python-Markdown's toc slugify)."""
    text = unicodedata.normalize("NFKD", heading_text(heading)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading_text(heading).strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    """The page's headings, in order, as written (without the leading #s)."""
    found = (HEADING.match(line) for _, line in prose_lines(path.read_text()))
    return [match.group(2) for match in found if match is not None]


def anchors(path: Path) -> set[str]:
    """Anchors that reach a heading of `path` both on GitHub and on the site (the two slugs agree)."""
    return {site_slug(h) for h in headings(path) if site_slug(h) == github_slug(h)}


@dataclass(frozen=True)
class Link:
    """A link written in a page: where (file:line) and its target as written."""

    source: str
    target: str

    @property
    def relative(self) -> bool:
        """A link into this repository (not a URL, not mail)."""
        return re.match(r"^[a-z][a-z0-9+.-]*:", self.target) is None


def links(path: Path) -> list[Link]:
    """Every Markdown link of `path` outside code (code blocks and inline code spans)."""
    return [
        Link(f"{path.name}:{number}", target)
        for number, line in prose_lines(path.read_text())
        for target in LINK.findall(CODE_SPAN.sub("", line))
    ]


@dataclass(frozen=True)
class Table:
    """A Markdown table: the nearest heading above it, its header cells and its rows of cells."""

    heading: str
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        """The cells of the column whose header is `name`."""
        index = self.header.index(name)
        return [row[index] if index < len(row) else "" for row in self.rows]


def cells(line: str) -> list[str]:
    """`| a | b \\| c |` -> ["a", "b | c"]."""
    parts = CELL_SEPARATOR.split(line.strip().strip("|"))
    return [part.strip().replace("\\|", "|") for part in parts]


def tables(path: Path) -> list[Table]:
    """Every table of `path`, each with the heading it sits under."""
    found: list[Table] = []
    heading, rows = "", []
    for _, line in [*prose_lines(path.read_text()), (0, "")]:
        match = HEADING.match(line)
        if line.lstrip().startswith("|"):
            rows.append(cells(line))
            continue
        if len(rows) >= 2 and set("".join(rows[1])) <= set("-: "):
            found.append(Table(heading, rows[0], rows[2:]))
        rows = []
        if match is not None:
            heading = match.group(2)
    return found


def code_spans(text: str) -> list[str]:
    """The inline code spans of `text`, in order."""
    return CODE_SPAN.findall(text)
