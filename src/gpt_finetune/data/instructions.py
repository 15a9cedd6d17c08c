"""Instruction records: read a JSON array or JSONL file (local or URL), validate every record, split."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpt_finetune.data.download import fetch, is_url
from gpt_finetune.errors import UserError

Record = dict[str, str]
FIELDS = ("instruction", "input", "output")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def load_records(source: str | Path, cache_dir: str | Path | None = None) -> list[Record]:
    """Validated `{"instruction", "input", "output"}` records from a path or an http(s) URL."""
    path = fetch(str(source), cache_dir) if is_url(str(source)) else Path(source).expanduser()
    if not path.is_file():
        raise UserError(
            f"{source}: no such file; set data.path to a JSON or JSONL file of instruction records"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is not JSON
    except UnicodeDecodeError as error:
        raise UserError(f"{source}: not UTF-8 text (byte {error.start}); re-save the file as UTF-8") from None
    raw = parse_records(text, str(source))
    if not raw:
        raise UserError(f'{source}: no records; add at least one {{"instruction", "input", "output"}} record')
    return [validate_record(item, where, str(source)) for item, where in raw]


def parse_records(text: str, source: str) -> list[tuple[Any, str]]:
    """(item, "record N" / "line N") pairs from a JSON array or from JSON lines."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{source}: invalid JSON at line {error.lineno} column {error.colno} ({error.msg}); "
                "fix the file"
            ) from None
        except (ValueError, RecursionError) as error:
            raise UserError(f"{source}: invalid JSON ({unreadable(error)}); fix the file") from None
        return [(item, f"record {i}") for i, item in enumerate(items)]
    check_not_one_object(text, source)
    pairs = []
    # Not splitlines(): U+2028, U+0085 and the like may stand raw in a JSON string; \r and \n may not.
    for number, line in enumerate(re.split(r"\r\n?|\n", text), start=1):
        if not line.strip():
            continue
        try:
            pairs.append((json.loads(line), f"line {number}"))
        except json.JSONDecodeError as error:
            raise UserError(
                f"{source}: line {number} is not valid JSON ({error.msg}, column {error.colno}); "
                "use a JSON array or one JSON object per line"
            ) from None
        except (ValueError, RecursionError) as error:
            raise UserError(
                f"{source}: line {number} is not valid JSON ({unreadable(error)}); fix it"
            ) from None
    return pairs


def check_not_one_object(text: str, source: str) -> None:
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
    one_line = len([line for line in re.split(r"\r\n?|\n", text) if line.strip()]) == 1
    if not isinstance(item, dict) or (one_line and Path(name).suffix.lower() in JSONL_SUFFIXES):
        return
    lists = [(key, len(value)) for key, value in item.items() if isinstance(value, list)]
    hint = f" (its {lists[0][0]!r} key holds a list of {lists[0][1]}: save that list alone)" if lists else ""
    raise UserError(
        f"{source}: holds one JSON object where a list of records belongs{hint}; wrap the records in "
        '[{"instruction": ..., "input": ..., "output": ...}, ...] or write one record per line (JSONL)'
    )


def unreadable(error: ValueError | RecursionError) -> str:
    """Why json.loads failed on well-formed text: Python limits integer digits and nesting depth."""
    return "nested too deeply" if isinstance(error, RecursionError) else "a number with too many digits"


def validate_record(item: Any, where: str, source: str) -> Record:
    """The record with a missing or null `input` as ""; a one-line error names the record and the field."""
    if not isinstance(item, dict):
        raise UserError(
            f"{source}: {where} is {json_kind(item)}, not an object; "
            'write each record as {"instruction": ..., "input": ..., "output": ...}'
        )
    record = {"input": "", **{field: item[field] for field in FIELDS if field in item}}
    if record["input"] is None:
        record["input"] = ""
    for field in FIELDS:
        if field not in record:
            raise UserError(
                f"{source}: {where} has no {field!r} field; every record needs instruction and output"
            )
        if not isinstance(record[field], str):
            raise UserError(
                f"{source}: {where} field {field!r} is {json_kind(record[field])}, not a string; "
                "make it a string"
            )
    return {field: record[field] for field in FIELDS}


def json_kind(value: Any) -> str:
    """What `value` is called in JSON: "a number", "an array", "null", ..."""
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"))
    return "null" if value is None else next((name for t, name in kinds if isinstance(value, t)), "an object")


def split_records(
    records: list[Record], train: float = 0.85, test: float = 0.10, shuffle: bool = False, seed: int = 123
) -> dict[str, list[Record]]:
    """The book's split: first `train`, then `test`, the rest validation (1100 -> 935 / 110 / 55)."""
    if not (0 < train < 1 and 0 <= test < 1 and train + test < 1):
        raise UserError(
            f"data.train_fraction={train} and data.test_fraction={test} must lie in (0, 1) and sum below 1"
        )
    order = list(records)
    if shuffle:
        random.Random(seed).shuffle(order)
    n_train, n_test = int(len(order) * train), int(len(order) * test)
    splits = {
        "train": order[:n_train],
        "test": order[n_train : n_train + n_test],
        "val": order[n_train + n_test :],
    }
    for name, part in splits.items():
        if not part:
            raise UserError(
                f"data: the {name} split is empty ({len(records)} records with train={train} test={test}); "
                "add records or change data.train_fraction / data.test_fraction"
            )
    return splits
