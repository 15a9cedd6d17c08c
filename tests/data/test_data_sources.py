"""Every data kind reads parquet, CSV (all but conversations) and JSONL with its own column names mapped by
`data.fields`; a missing column is one line naming the columns the file has; Hub names parse."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_finetune.data.classification import Example, load_examples
from gpt_finetune.data.classify_datamodule import ClassificationDataModule
from gpt_finetune.data.conversations import load_conversations
from gpt_finetune.data.hub import HubDataset, data_files, parse_hub
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.data.instructions import load_records
from gpt_finetune.data.preference_datamodule import PreferenceDataModule, load_pairs
from gpt_finetune.errors import UserError

CHAT = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
KINDS: dict[str, dict[str, Any]] = {  # the file's own columns, data.fields, and what is read
    "instructions": {
        "rows": [
            {"question": "Add 2 and 2.", "context": "", "answer": "4"},
            {"question": "Hi", "context": "x", "answer": "Hello"},
        ],
        "fields": {"instruction": "question", "input": "context", "output": "answer"},
        "read": lambda path, fields: load_records(path, mapping=fields),
        "expected": [
            {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
            {"instruction": "Hi", "input": "x", "output": "Hello"},
        ],
    },
    "preferences": {
        "rows": [{"q": "Add 2 and 2.", "good": "It is 4.", "bad": "4, obviously."}],
        "fields": {"instruction": "q", "chosen": "good", "rejected": "bad"},
        "read": lambda path, fields: load_pairs(path, mapping=fields),
        "expected": [
            {
                "instruction": "Add 2 and 2.",
                "input": "",
                "chosen": "It is 4.",
                "rejected": "4, obviously.",
                "output": "It is 4.",
            }
        ],
    },
    "classification": {
        "rows": [{"body": "win a prize now", "kind": "spam"}, {"body": "see you at 6", "kind": "ham"}],
        "fields": {"text": "body", "label": "kind"},
        "read": lambda path, fields: load_examples(str(path), ["ham", "spam"], fields=fields),
        "expected": None,  # per format: Example(text, label, line or record)
    },
    "conversations": {
        "rows": [{"dialog": CHAT}],
        "fields": {"messages": "dialog"},
        "read": lambda path, fields: load_conversations(path, mapping=fields),
        "expected": [{"messages": CHAT[:1], "instruction": "Name a colour.", "input": "", "output": "Red."}],
    },
}


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` as a parquet, CSV or JSONL file, by the suffix of `path`."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def expected(kind: str, suffix: str) -> object:
    if kind != "classification":
        return KINDS[kind]["expected"]
    numbers = {".parquet": (0, 1), ".csv": (2, 3), ".jsonl": (1, 2)}[suffix]  # record / line numbers
    return [Example("win a prize now", 1, numbers[0]), Example("see you at 6", 0, numbers[1])]


def user_error(call: Callable[..., object], *args: object) -> str:
    with pytest.raises(UserError) as caught:
        call(*args)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_reads_every_format_with_its_own_column_names(
    tmp_path: Path, kind: str, suffix: str
) -> None:
    if kind == "conversations" and suffix == ".csv":
        pytest.skip("a CSV cell holds no list of turns")
    spec = KINDS[kind]
    path = write(tmp_path / f"data{suffix}", spec["rows"])
    assert spec["read"](path, spec["fields"]) == expected(kind, suffix)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_missing_column_names_the_columns_the_file_has(tmp_path: Path, kind: str) -> None:
    spec = KINDS[kind]
    ours = next(iter(spec["fields"]))
    path = write(tmp_path / "data.parquet", spec["rows"])
    message = user_error(spec["read"], path, {**spec["fields"], ours: "nope"})
    columns = ", ".join(spec["rows"][0])
    assert message.startswith(f"{path}: ")
    assert "'nope'" in message and f"(its columns: {columns})" in message, message


def test_an_unmapped_file_says_which_field_is_missing_and_how_to_map_it(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", KINDS["instructions"]["rows"])
    assert user_error(load_records, path) == (
        f"{path}: line 2 has no 'instruction' field; every record needs instruction and output "
        "(its columns: question, context, answer); name yours with data.fields={instruction: COLUMN}"
    )


@pytest.mark.parametrize(
    ("module", "kind", "fields"),
    [
        (InstructionDataModule, "instruction", {"prompt": "q"}),
        (PreferenceDataModule, "preference", {"text": "q"}),
        (ClassificationDataModule, "classification", {"instruction": "q"}),
    ],
)
def test_fields_that_are_not_ours_are_refused_before_any_work(module: type, kind: str, fields: dict) -> None:
    settings = {"labels": ["ham", "spam"]} if module is ClassificationDataModule else {}
    message = user_error(lambda: module(path="x.json", fields=fields, **settings))
    assert f"is not a field of {kind} data; map columns onto" in message


def test_a_file_that_is_not_parquet_inside_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 but not really")
    assert user_error(load_records, path).startswith(f"{path}: cannot read it as parquet")


@pytest.mark.parametrize(
    ("source", "dataset"),
    [
        ("hf://datasets/me/chats", HubDataset("me/chats")),
        ("hf://datasets/me/chats/data/train.parquet", HubDataset("me/chats", "data/train.parquet")),
        ("hf://datasets/me/chats/data/train.parquet@v1", HubDataset("me/chats", "data/train.parquet", "v1")),
        ("hf://datasets/me/chats@v1/train.jsonl", HubDataset("me/chats", "train.jsonl", "v1")),
        (
            "hf://datasets/me/chats@refs%2Fconvert%2Fparquet",
            HubDataset("me/chats", None, "refs/convert/parquet"),
        ),
    ],
)
def test_hub_names_parse(source: str, dataset: HubDataset) -> None:
    assert parse_hub(source) == dataset


@pytest.mark.parametrize("source", ["hf://models/gpt2", "hf://datasets/me", "hf://datasets/me/chats@"])
def test_bad_hub_names_are_one_line(source: str) -> None:
    assert "hf://datasets/OWNER/NAME[/FILE][@REVISION]" in user_error(parse_hub, source)


def test_a_repo_is_read_from_its_only_data_file_or_its_train_split() -> None:
    repo = HubDataset("me/chats")
    assert data_files(["data.jsonl"], repo) == ["data.jsonl"]
    shards = [
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    ]
    assert data_files(shards, repo) == shards[1:]
    message = user_error(data_files, ["a.jsonl", "b.jsonl"], repo)
    assert "holds 2 data files and no train split (a.jsonl, b.jsonl)" in message
    assert "data.path=hf://datasets/me/chats/a.jsonl" in message


def test_column_names_that_would_break_the_line_are_quoted(tmp_path: Path) -> None:
    # hypothesis found a JSONL record {"\n": false} whose error spread over two lines
    path = write(tmp_path / "data.jsonl", [{"\n": False, "": 1, " a": 2, "question": "q"}])
    assert user_error(load_records, path) == (
        f"{path}: line 1 has no 'instruction' field; every record needs instruction and output "
        "(its columns: '\\n', '', ' a', question); name yours with data.fields={instruction: COLUMN}"
    )
