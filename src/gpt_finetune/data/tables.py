"""Records from the data files of a source: JSON, JSONL, CSV (a header row) or parquet.

Each record comes with where it is, for messages: `record N` (JSON array, parquet row, from 0) or
`line N` (JSONL, CSV). Parquet is recognised by its magic bytes, CSV by the name (`.csv`, `.tsv`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gpt_finetune.data.fields import renamed
from gpt_finetune.data.json_records import read_records, read_utf8
from gpt_finetune.data.sources import local_files
from gpt_finetune.errors import UserError

PARQUET_MAGIC = b"PAR1"
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
Located = tuple[Any, str]  # (record, where it is in its file)


def is_parquet(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == PARQUET_MAGIC


def read_table(path: Path, source: str, shape: str) -> list[Located]:
    """The records of the file at `path` (named `source` in messages); `shape` is how one looks."""
    if is_parquet(path):
        return read_parquet(path, source)
    delimiter = CSV_DELIMITERS.get(path.suffix.lower())  # a URL's or Hub file's cached copy keeps its name
    if delimiter is not None:
        return read_csv(read_utf8(path, source), source, delimiter)
    return read_records(read_utf8(path, source), source, shape)


def read_parquet(path: Path, source: str) -> list[Located]:
    """Each row of a parquet file as a dict (nested lists and structs as lists and dicts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{source}: cannot read it as parquet ({error}); re-save the file") from None
    return [(row, f"record {i}") for i, row in enumerate(rows)]


def read_csv(text: str, source: str, delimiter: str = ",") -> list[Located]:
    """Each row after the header as a dict of the header's columns; blank lines are skipped."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[Located] = []
    previous = 0  # the last line read
    try:
        if reader.fieldnames is None:
            return []
        previous = reader.line_num
        for row in reader:
            rows.append((row, f"line {reader.line_num}"))  # where the row ends (a quoted text may span lines)
            previous = reader.line_num
    except csv.Error as error:
        raise UserError(
            f"{source}: after line {previous} is not valid CSV ({error}, read to line {reader.line_num}); "
            'check its quotes (close each one; write a quote inside quotes as "")'
        ) from None
    return rows


def records_of(
    source: str, cache_dir: str | Path | None, shape: str, mapping: Mapping[str, str] | None = None
) -> Iterator[tuple[Any, str, str]]:
    """(record, where, file name) for every record of every file `source` stands for (a path, URL or Hub
    dataset), its columns named in `mapping` (`data.fields`) also under our names."""
    expected = f"a JSON, JSONL, CSV or parquet file of records like {shape}"
    for path, name in local_files(source, cache_dir, expected):
        for item, where in read_table(path, name, shape):
            yield renamed(item, mapping or {}, name, where), where, name
