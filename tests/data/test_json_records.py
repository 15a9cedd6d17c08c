"""One JSON / JSONL reader: every data kind reads the same lines and says the same about a broken one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_finetune.data.classification import load_examples
from gpt_finetune.data.instructions import load_records
from gpt_finetune.data.json_records import read_lines
from gpt_finetune.errors import UserError

GOOD = '{"instruction": "a", "output": "b", "text": "a", "label": "ham"}'
BROKEN = {
    "syntax": (
        '{"instruction": "a", "output": \n',
        "line 2 is not valid JSON (Expecting value, column 32); fix the line (one JSON object per line)",
    ),
    "nesting": ("[" * 100_000 + "\n", "line 2 cannot be read as JSON (nested too deeply); fix the line"),
    "digits": (
        '{"label": ' + "9" * 5000 + "}\n",
        "line 2 cannot be read as JSON (a number with too many digits)",
    ),
}


def message(call: object, *args: object) -> str:
    with pytest.raises(UserError) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value)


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_line_reads_the_same_for_instructions_and_classification(tmp_path: Path, case: str) -> None:
    line, fragment = BROKEN[case]
    path = tmp_path / "d.jsonl"
    path.write_text(f"{GOOD}\n{line}", encoding="utf-8")
    instructions = message(load_records, path)
    classification = message(load_examples, str(path), ["ham", "spam"], "jsonl", "text", "label")
    assert instructions == classification
    assert instructions.startswith(f"{path}: {fragment}") and "\n" not in instructions


def test_not_utf8_reads_the_same_for_instructions_and_classification(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\xe9\n")
    expected = f"{path}: not UTF-8 text (byte {len(GOOD) + 1}); re-save the file as UTF-8"
    assert message(load_records, path) == expected
    assert message(load_examples, str(path), ["ham", "spam"], "jsonl", "text", "label") == expected


def test_lines_break_only_at_newlines_and_blank_ones_are_skipped() -> None:
    assert read_lines('"a\u2028b"\r\n\n  \r"c\x85d"\n1', "x") == [(1, "a\u2028b"), (4, "c\x85d"), (5, 1)]
