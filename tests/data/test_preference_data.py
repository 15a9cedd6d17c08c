"""Preference pairs: the book's file, one-line errors, and the pair collate (chosen rows, then rejected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt_finetune.data.preference_datamodule import PreferenceDataModule, load_pairs
from gpt_finetune.data.prompts import format_prompt
from gpt_finetune.errors import UserError
from gpt_finetune.tokenizer import END_OF_TEXT, gpt2_tokenizer

PAIRS = [
    {"instruction": "Say hi.", "input": "", "chosen": "Hello, friend.", "rejected": "Hi."},
    {
        "instruction": "Add.",
        "input": "2 + 2",
        "output": "4",
        "chosen": "It is 4.",
        "rejected": "4, obviously.",
    },
    {"instruction": "Name a colour.", "chosen": "Blue, please.", "rejected": "Blue."},
    {"instruction": "Spell.", "input": None, "chosen": "c-a-t, thank you", "rejected": "cat"},
]


def write_pairs(folder: Path, records: list[dict[str, object]]) -> Path:
    path = folder / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_output_is_ignored_and_becomes_the_chosen_response(tmp_path: Path) -> None:
    records = load_pairs(write_pairs(tmp_path, PAIRS))
    assert records[1] == {
        "instruction": "Add.",
        "input": "2 + 2",
        "chosen": "It is 4.",
        "rejected": "4, obviously.",
        "output": "It is 4.",
    }
    assert [r["input"] for r in records] == ["", "2 + 2", "", ""]  # missing and null input: ""


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"instruction": "a", "chosen": "b"},
            "record 1 has no 'rejected' field; every record needs instruction and chosen and rejected",
        ),
        (
            {"instruction": "a", "chosen": ["b"], "rejected": "c"},
            "record 1 field 'chosen' is an array, not a string",
        ),
        ("a pair", "record 1 is a string, not an object"),
    ],
)
def test_bad_pairs_are_one_line_errors_naming_the_record(
    tmp_path: Path, record: object, message: str
) -> None:
    path = write_pairs(tmp_path, [PAIRS[0], record])  # type: ignore[list-item]
    with pytest.raises(UserError) as error:
        load_pairs(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_collate_puts_chosen_rows_then_rejected_rows_and_learns_only_the_responses(tmp_path: Path) -> None:
    path = str(write_pairs(tmp_path, PAIRS))
    data = PreferenceDataModule(path=path, style="phi3", batch_size=2, train_fraction=0.5, test_fraction=0.25)
    data.setup("fit")
    tokenizer = gpt2_tokenizer()
    items = [data.datasets["train"][i] for i in (0, 1)]  # the first two pairs
    batch = data.collate(items)
    assert batch["index"].tolist() == [0, 1]
    rows = batch["input_ids"].shape[0]
    assert rows == 4
    for row, (record, key) in enumerate(
        [(PAIRS[0], "chosen"), (PAIRS[1], "chosen"), (PAIRS[0], "rejected"), (PAIRS[1], "rejected")]
    ):
        prompt = tokenizer.encode(format_prompt({**record, "input": record.get("input") or ""}, "phi3"))
        response = tokenizer.encode(str(record[key]))
        full = prompt + response
        assert batch["input_ids"][row, : len(full)].tolist() == full
        targets = batch["targets"][row].tolist()
        learned = [t for t in targets if t != -100]
        # The response and one end-of-text are learned; the prompt and the later padding are not.
        assert learned == [*response, END_OF_TEXT]
        assert targets[: len(prompt) - 1] == [-100] * (len(prompt) - 1)


def test_splits_follow_the_instruction_rule_and_the_book_file_reads(shared_data) -> None:
    path = shared_data("instruction-data-with-preference.json")
    data = PreferenceDataModule(path=str(path))
    data.setup("fit")
    assert {name: len(part) for name, part in data.splits.items()} == {"train": 935, "test": 110, "val": 55}
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert data.splits["test"][0]["chosen"] == raw[935]["chosen"]
    assert data.splits["test"][0]["output"] == raw[935]["chosen"]
