"""mkdocs hook: a pipe inside code in a table cell reads the same on the site as on GitHub.

GitHub needs `<\\|endoftext\\|>` there (an unescaped pipe would end the cell) and shows `<|endoftext|>`;
Python-Markdown already keeps pipes inside code spans in their cell, and would show the backslashes.
"""

from __future__ import annotations

import re
from typing import Any

CODE_SPAN = re.compile(r"`[^`\n]+`")


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Drop the backslash of `\\|` inside code spans on table rows."""
    lines = markdown.split("\n")
    for number, line in enumerate(lines):
        if line.lstrip().startswith("|"):
            lines[number] = CODE_SPAN.sub(lambda code: code.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)
