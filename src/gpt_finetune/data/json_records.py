"""The one JSON / JSONL reader for every data kind: UTF-8 text, an array or JSON lines, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpt_finetune.data.download import is_url
from gpt_finetune.errors import UserError

LINE_BREAK = re.compile(r"\r\n?|\n")  # not splitlines(): U+2028, U+0085 and the like may stand raw in JSON
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_utf8(path: Path, source: str) -> str:
    """The file's text without a leading byte-order mark (not JSON); not UTF-8 is a one-line error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{source}: not UTF-8 text (byte {error.start}); re-save the file as UTF-8") from None


def read_records(text: str, source: str, shape: str) -> list[tuple[Any, str]]:
    """(item, "record N" / "line N") pairs from a JSON array or from JSON lines.

    `shape` is how one record looks (`{"instruction": ..., "output": ...}`), for the messages.
    """
    if text.lstrip().startswith("["):
        return [(item, f"record {i}") for i, item in enumerate(loads(text, source))]
    check_not_one_object(text, source, shape)
    return [(item, f"line {number}") for number, item in read_lines(text, source)]


def read_lines(text: str, source: str) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSON lines file."""
    lines = enumerate(LINE_BREAK.split(text), start=1)
    return [(number, loads(line, source, number)) for number, line in lines if line.strip()]


def loads(text: str, source: str, line: int | None = None) -> Any:
    """`json.loads`; a failure is one line naming where: line and column in the file, or the JSONL line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if line is None:
            problem = f"invalid JSON at line {error.lineno} column {error.colno} ({error.msg}); fix the file"
        else:
            problem = (
                f"line {line} is not valid JSON ({error.msg}, column {error.colno}); "
                "fix the line (one JSON object per line)"
            )
    except (ValueError, RecursionError) as error:
        reason = unreadable(error)
        if line is None:
            problem = f"invalid JSON ({reason}); fix the file"
        else:
            problem = f"line {line} cannot be read as JSON ({reason}); fix the line"
    raise UserError(f"{source}: {problem}")


def check_not_one_object(text: str, source: str, shape: str) -> None:
    """Fail when the whole file is one JSON object: a `.json` file, or an object spread over several lines.

    A one-line object in a `.jsonl` file is a JSONL file of one record and passes.
    """
    if not text.lstrip().startswith("{"):
        return
    try:
        item = json.loads(text)
    except (ValueError, RecursionError):
        return  # several JSON lines (or a broken one): the JSONL reader reports it by line
    name = urlsplit(source).path if is_url(source) else source
    one_line = len([line for line in LINE_BREAK.split(text) if line.strip()]) == 1
    if not isinstance(item, dict) or (one_line and Path(name).suffix.lower() in JSONL_SUFFIXES):
        return
    lists = [(key, len(value)) for key, value in item.items() if isinstance(value, list)]
    hint = f" (its {lists[0][0]!r} key holds a list of {lists[0][1]}: save that list alone)" if lists else ""
    raise UserError(
        f"{source}: holds one JSON object where a list of records belongs{hint}; wrap the records in "
        f"[{shape}, ...] or write one record per line (JSONL)"
    )


def unreadable(error: ValueError | RecursionError) -> str:
    """Why json.loads failed on well-formed text: Python limits integer digits and nesting depth."""
    return "nested too deeply" if isinstance(error, RecursionError) else "a number with too many digits"


def json_kind(value: Any) -> str:
    """What `value` is called in JSON: "a number", "an array", "null", ..."""
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"))
    return "null" if value is None else next((name for t, name in kinds if isinstance(value, t)), "an object")
