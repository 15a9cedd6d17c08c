"""Instruction records: read a data file (JSON, JSONL, CSV, parquet; local, URL, Hub), validate, split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpt_finetune.data.fields import columns_of
from gpt_finetune.data.json_records import json_kind
from gpt_finetune.data.splits import split_shares
from gpt_finetune.data.tables import records_of
from gpt_finetune.errors import UserError

Record = dict[str, str]
FIELDS = ("instruction", "input", "output")
SHAPE = '{"instruction": ..., "input": ..., "output": ...}'


def load_records(
    source: str | Path,
    cache_dir: str | Path | None = None,
    fields: tuple[str, ...] = FIELDS,
    shape: str = SHAPE,
    mapping: Mapping[str, str] | None = None,
) -> list[Record]:
    """Validated records from a path, an http(s) URL or a Hub dataset (JSON, JSONL, CSV or parquet):
    `{"instruction", "input", "output"}`, or the string `fields` (an optional `input`) of another kind of
    record, which looks like `shape`; `mapping` (`data.fields`) names the file's columns for ours."""
    records = [
        validate_record(item, where, name, fields, shape)
        for item, where, name in records_of(str(source), cache_dir, shape, mapping)
    ]
    if not records:
        raise UserError(f"{source}: no records; add at least one record like {shape}")
    return records


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
            raise UserError(
                f"{source}: {where} has no {field!r} field; every record needs {required}{columns_of(item)}; "
                f"name yours with data.fields={{{field}: COLUMN}}"
            )
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
