"""Instruction records: read a JSON array or JSONL file (local or URL), validate every record, split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt_finetune.data.download import fetch, is_url
from gpt_finetune.data.json_records import json_kind, read_records, read_utf8
from gpt_finetune.data.splits import split_shares
from gpt_finetune.errors import UserError

Record = dict[str, str]
FIELDS = ("instruction", "input", "output")
SHAPE = '{"instruction": ..., "input": ..., "output": ...}'


def load_records(
    source: str | Path,
    cache_dir: str | Path | None = None,
    fields: tuple[str, ...] = FIELDS,
    shape: str = SHAPE,
) -> list[Record]:
    """Validated records from a path or an http(s) URL: `{"instruction", "input", "output"}`, or the
    string `fields` (an optional `input`) of another kind of record, which looks like `shape`."""
    path = fetch(str(source), cache_dir) if is_url(str(source)) else Path(source).expanduser()
    if not path.is_file():
        raise UserError(
            f"{source}: no such file; set data.path to a JSON or JSONL file of records like {shape}"
        )
    raw = read_records(read_utf8(path, str(source)), str(source), shape)
    if not raw:
        raise UserError(f"{source}: no records; add at least one record like {shape}")
    return [validate_record(item, where, str(source), fields, shape) for item, where in raw]


def validate_record(
    item: Any, where: str, source: str, fields: tuple[str, ...] = FIELDS, shape: str = SHAPE
) -> Record:
    """The record's `fields` with a missing or null `input` as ""; a one-line error names the record and
    the field. Other keys are left out."""
    if not isinstance(item, dict):
        raise UserError(
            f"{source}: {where} is {json_kind(item)}, not an object; write each record as {shape}"
        )
    record = {"input": "", **{field: item[field] for field in fields if field in item}}
    if record["input"] is None:
        record["input"] = ""
    required = " and ".join(field for field in fields if field != "input")
    for field in fields:
        if field not in record:
            raise UserError(f"{source}: {where} has no {field!r} field; every record needs {required}")
        if not isinstance(record[field], str):
            raise UserError(
                f"{source}: {where} field {field!r} is {json_kind(record[field])}, not a string; "
                "make it a string"
            )
    return {field: record[field] for field in fields}


def split_records(
    records: list[Record], train: float = 0.85, test: float = 0.10, shuffle: bool = False, seed: int = 123
) -> dict[str, list[Record]]:
    """The book's split: first `train`, then `test`, the rest validation (1100 -> 935 / 110 / 55)."""
    if not (0 < train < 1 and 0 <= test < 1 and train + test < 1):
        raise UserError(
            f"data.train_fraction={train} and data.test_fraction={test} must lie in (0, 1) and sum below 1"
        )
    splits = split_shares(records, {"train": train, "test": test}, "val", shuffle, seed)
    for name, part in splits.items():
        if not part:
            raise UserError(
                f"data: the {name} split is empty ({len(records)} records with train={train} test={test}); "
                "add records or change data.train_fraction / data.test_fraction"
            )
    return splits
