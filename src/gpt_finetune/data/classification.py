"""Labelled texts: read UCI SMS / CSV / TSV / JSONL / parquet (local, zip, URL, Hub), map labels, balance,
split."""

from __future__ import annotations

import csv
import io
import random
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpt_finetune.artifacts import atomic_path
from gpt_finetune.data.download import cached_path, fetch, is_url
from gpt_finetune.data.fields import columns_of
from gpt_finetune.data.hub import hub_files, is_hub
from gpt_finetune.data.json_records import json_kind, read_lines, read_utf8
from gpt_finetune.data.splits import split_shares
from gpt_finetune.data.tables import is_parquet, read_parquet
from gpt_finetune.errors import UserError

Format = Literal["auto", "csv", "tsv", "jsonl", "parquet"]
Column = int | str
Row = tuple[int, Any, Any]  # (line, or parquet record, text, label) as read
SPLITS = ("train", "val", "test")
csv.field_size_limit(
    2**31 - 1
)  # long texts are fine (the default limit is 128 KiB); the C long max on every OS


@dataclass(frozen=True)
class Example:
    """One labelled text; `line` is where it starts in its file (for messages)."""

    text: str
    label: int
    line: int


def check_labels(labels: list[Any]) -> list[str]:
    """The label names as strings; at least two, no repeats."""
    names = [str(name) for name in labels]
    if len(names) < 2:
        raise UserError(f"data.labels={names} lists {len(names)} class; list at least two label names")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"data.labels lists {', '.join(repeated)} more than once; list each label once")
    return names


def resolve_source(path: str, member: str | None = None, cache_dir: str | None = None) -> tuple[Path, str]:
    """(local file, name for messages): a URL is fetched once into the cache, a zip's `member` extracted."""
    local = fetch(path, cache_dir) if is_url(path) else Path(path).expanduser()
    if not local.is_file():
        raise UserError(f"{path}: no such file; set data.path to a labelled text file (TSV, CSV or JSONL)")
    if not zipfile.is_zipfile(local):
        return local, path
    if member is None:
        raise UserError(f"{path} is a zip archive; set data.member to the file inside it to read")
    key = path if is_url(path) else str(local.resolve())
    target = cached_path(f"{key}#{member}", cache_dir)
    if not target.is_file():
        with zipfile.ZipFile(local) as archive:
            if member not in archive.namelist():
                names = ", ".join(archive.namelist())
                raise UserError(f"{path} has no member {member!r} (members: {names}); set data.member")
            with atomic_path(target) as tmp:
                tmp.write_bytes(archive.read(member))
    return target, f"{path} ({member})"


def resolve_format(path: Path, fmt: Format) -> Format:
    """`auto`: .csv -> csv, .jsonl / .json -> jsonl, .parquet -> parquet, anything else (SMSSpamCollection,
    .tsv, .txt) -> tsv; a parquet file by any name is found by its magic bytes (`read_file`)."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    kinds: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
    return kinds.get(suffix, "tsv")


def read_file(
    local: Path, source: str, fmt: Format, text_column: Column, label_column: Column
) -> tuple[list[Row], str]:
    """(line or record, text, label) of every record of one file, and which of the two the numbers are."""
    if fmt == "parquet" or (fmt == "auto" and is_parquet(local)):
        records = [(i, item) for i, (item, _) in enumerate(read_parquet(local, source))]
        return keyed_rows(records, source, text_column, label_column, "record"), "record"
    text = read_utf8(local, source)
    return read_rows(text, source, resolve_format(local, fmt), text_column, label_column), "line"


def read_rows(text: str, source: str, fmt: Format, text_column: Column, label_column: Column) -> list[Row]:
    """(line, text, label) per record; a column is a header name or, without a header, a 0-based index."""
    if fmt == "jsonl":
        return read_jsonl(text, source, text_column, label_column)
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter="," if fmt == "csv" else "\t",
        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
        strict=True,
    )
    columns: dict[str, Column] = {"label": label_column, "text": text_column}
    header: list[str] = []
    if any(isinstance(c, str) for c in columns.values()):
        header = parse_next(reader, source, fmt, 1) or []
        for role, column in columns.items():
            if isinstance(column, str) and column not in header:
                raise UserError(
                    f"{source}: line 1 (header) has no {role} column {column!r} (columns: "
                    f"{', '.join(header)}); set data.fields.{role} (or data.{role}_column) to one of them"
                )
    indices = {role: header.index(c) if isinstance(c, str) else c for role, c in columns.items()}
    need = max(indices.values()) + 1
    width = max(need, len(header))  # fields per row: the header's, else just what the columns need
    rows, previous = [], reader.line_num
    while (fields := parse_next(reader, source, fmt, previous + 1)) is not None:
        line, previous = previous + 1, reader.line_num
        if not any(field.strip() for field in fields):
            continue
        if len(fields) < need:
            raise UserError(
                f"{source}: line {line} has {len(fields)} column(s), data.label_column={label_column} and "
                f"data.text_column={text_column} need {need}; is the file {fmt.upper()} (data.format)?"
            )
        if fmt == "tsv" and len(fields) > width:  # a tab inside the text: TSV has no quoting to protect it
            if indices["text"] != width - 1:
                raise UserError(
                    f"{source}: line {line} has {len(fields)} tab-separated columns, expected {width}; "
                    "remove the extra tabs or make the text the last column"
                )
            fields = [*fields[: width - 1], "\t".join(fields[width - 1 :])]
        rows.append((line, fields[indices["text"]], fields[indices["label"]]))
    return rows


def parse_next(reader: Any, source: str, fmt: Format, line: int) -> list[str] | None:
    """The reader's next record (None at the end); a malformed one is a one-line error naming its line."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as error:
        hint = (
            'check its quotes (close each one; write a quote inside quotes as "")'
            if fmt == "csv"
            else "fix it"
        )
        raise UserError(
            f"{source}: line {line} (read to line {reader.line_num}) is not valid {fmt.upper()} ({error}); "
            f"{hint} or set data.format"
        ) from None


def read_jsonl(text: str, source: str, text_column: Column, label_column: Column) -> list[Row]:
    """(line, text, label) from one JSON object per line; the columns are key names."""
    return keyed_rows(read_lines(text, source), source, text_column, label_column, "line")


def keyed_rows(
    records: list[tuple[int, Any]], source: str, text_column: Column, label_column: Column, unit: str
) -> list[Row]:
    """(number, text, label) from records read by key (JSONL lines, parquet rows: `unit`)."""
    if not (isinstance(text_column, str) and isinstance(label_column, str)):
        raise UserError(
            f"{source}: {'JSONL' if unit == 'line' else 'parquet'} is read by key; "
            "set data.text_column and data.label_column (or data.fields) to names"
        )
    rows = []
    for number, record in records:
        for role, key in (("label", label_column), ("text", text_column)):
            if not isinstance(record, dict) or key not in record:
                columns = columns_of(record) if isinstance(record, dict) else ""
                raise UserError(
                    f"{source}: {unit} {number} has no {role} key {key!r}{columns}; add it or set "
                    f"data.fields.{role} (data.{role}_column)"
                )
        rows.append((number, record[text_column], record[label_column]))
    return rows


def to_examples(rows: list[Row], labels: list[str], source: str, unit: str = "line") -> list[Example]:
    """Examples with label ids (the position in `labels`); a one-line error names the bad line (or
    parquet record: `unit`)."""
    ids = {name: i for i, name in enumerate(labels)}
    examples = []
    for line, text, raw_label in rows:
        label = str(raw_label).strip()
        if label not in ids:
            raise UserError(
                f"{source}: {unit} {line}: label {label!r} is not one of {', '.join(labels)}; "
                "fix the line or add the label to data.labels"
            )
        if not isinstance(text, str):
            kind = json_kind(text)
            raise UserError(f"{source}: {unit} {line}: text is {kind}, not a string; make it a string")
        if not text.strip():
            raise UserError(f"{source}: {unit} {line}: empty text; remove the {unit} or write its text")
        examples.append(Example(text, ids[label], line))
    return examples


def check_classes(examples: list[Example], labels: list[str], source: str) -> None:
    """Every listed class must have examples, and there must be at least two of them."""
    present = {e.label for e in examples}
    if not examples:
        raise UserError(f"{source}: no records; add lines of label and text")
    if len(present) == 1:
        only = labels[present.pop()]
        raise UserError(
            f"{source}: every record is {only!r} (one class only); a classifier needs examples of "
            f"at least two of data.labels={labels}"
        )
    missing = [name for i, name in enumerate(labels) if i not in present]
    if missing:
        raise UserError(
            f"{source}: no records labelled {', '.join(map(repr, missing))}; "
            "add examples or remove the label from data.labels"
        )


def load_examples(
    path: str,
    labels: list[Any],
    fmt: Format = "auto",
    text_column: Column = 1,
    label_column: Column = 0,
    member: str | None = None,
    cache_dir: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> list[Example]:
    """Validated examples from a path, zip, URL or Hub dataset (UCI SMS layout by default: `label<TAB>text`,
    no header); `fields` (`{text: COLUMN, label: COLUMN}`) names the columns instead of the two settings."""
    names = check_labels(labels)
    text_column = (fields or {}).get("text", text_column)
    label_column = (fields or {}).get("label", label_column)
    sources = hub_files(path) if is_hub(path) else [resolve_source(path, member, cache_dir)]
    examples = []
    for local, source in sources:
        rows, unit = read_file(local, source, fmt, text_column, label_column)
        examples += to_examples(rows, names, source, unit)
    check_classes(examples, names, sources[0][1] if len(sources) == 1 else path)
    return examples


def balance(examples: list[Example], seed: int = 123) -> list[Example]:
    """Undersample every class to the smallest class's count (book: 747 ham + 747 spam), in file order."""
    by_class: dict[int, list[int]] = {}
    for index, example in enumerate(examples):
        by_class.setdefault(example.label, []).append(index)
    count = min(len(indices) for indices in by_class.values())
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], count))
    return [examples[i] for i in keep]


def split_examples(
    examples: list[Example], train: float = 0.7, val: float = 0.1, shuffle: bool = True, seed: int = 123
) -> dict[str, list[Example]]:
    """Seeded shuffle, then the first `train` share, the next `val` share, the rest test (book: 70/10/20)."""
    if not (0 < train < 1 and 0 < val < 1 and train + val < 1):
        raise UserError(
            f"data.train_fraction={train} and data.val_fraction={val} must lie in (0, 1) and sum below 1"
        )
    return split_shares(examples, {"train": train, "val": val}, "test", shuffle, seed)


def check_splits(splits: dict[str, list[Example]], labels: list[str]) -> None:
    """Every split needs at least one example of every class; all gaps are reported at once."""
    gaps = []
    for name, part in splits.items():
        present = {e.label for e in part}
        missing = [label for i, label in enumerate(labels) if i not in present]
        if missing:
            gaps.append(f"the {name} split ({len(part)} records) has no {', '.join(map(repr, missing))}")
    if gaps:
        raise UserError(
            f"data: {'; '.join(gaps)}; add records, set data.balance=true, "
            "or change data.train_fraction / data.val_fraction"
        )
