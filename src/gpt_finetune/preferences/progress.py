"""The progress file `<out>.partial.jsonl`: a header line, then one line per finished record, appended as
each finishes, so an interrupted run resumes where it stopped and never asks the judge about a record twice.

A line is `{"index": i, "pair": {...}}` (written to the output) or `{"index": i, "left_out": reason}`.
A last line cut short by an interruption is dropped when the file is read back.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_finetune.errors import UserError

FORMAT = 1


def progress_path(out: Path) -> Path:
    """Where the progress of the run writing `out` is kept: `<out>.partial.jsonl` beside it."""
    return out.with_name(f"{out.name}.partial.jsonl")


@dataclass
class Progress:
    """The finished records of a run (index -> its line), and the open progress file that new ones join."""

    path: Path
    header: dict[str, Any]
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Progress:
        """The progress in `path` (created with `header` when absent); a file started with a different
        header (input, mode, seed, model) is refused in one line."""
        progress = cls(path, {"format": FORMAT, **header})
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"header": progress.header}) + "\n", encoding="utf-8")
            return progress
        lines = path.read_bytes().split(b"\n")
        kept = lines[:-1]  # everything up to the last newline: a cut-short last line is dropped
        saved = _parse(kept[0], path, 1).get("header") if kept else None
        if saved != progress.header:
            raise UserError(mismatch(path, saved, progress.header))
        for number, line in enumerate(kept[1:], start=2):
            entry = _parse(line, path, number)
            progress.done[int(entry["index"])] = entry
        if lines[-1]:
            with path.open("r+b") as file:  # drop the cut-short line, so the next one starts on its own
                file.truncate(sum(len(line) + 1 for line in kept))
        return progress

    def add(self, entry: dict[str, Any]) -> None:
        """Record a finished record (`index` plus `pair` or `left_out`): appended and flushed to disk."""
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            if self._closed:
                return
            with self.path.open("a", encoding="utf-8") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())
            self.done[int(entry["index"])] = entry

    def close(self, remove: bool = False) -> None:
        """Take no more records (jobs still in flight are dropped); `remove` deletes the file."""
        with self._lock:
            self._closed = True
            if remove:
                self.path.unlink(missing_ok=True)


def _parse(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
        if isinstance(entry, dict) and ("header" in entry or "index" in entry):
            return entry
    except ValueError:
        pass
    raise UserError(f"{path}: line {number} is not a progress entry; delete the file to start over")


def mismatch(path: Path, saved: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    """One line saying how a progress file's run differs from this one, and the two ways out."""
    if saved is None:
        return f"{path} has no header line; delete it to start over"
    differing = [
        "other records in data.path"
        if key == "input"
        else f"{key} {saved.get(key)!r} there, {wanted.get(key)!r} now"
        for key in dict.fromkeys([*saved, *wanted])
        if saved.get(key) != wanted.get(key)
    ]
    return (
        f"{path} belongs to another run ({'; '.join(differing)}); rerun with that run's settings to "
        "resume it, or delete it (or pass out=OTHER.json) to start over"
    )
