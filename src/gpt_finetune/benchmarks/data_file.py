"""The instruction data a benchmark measures on: an explicit `--data` file, checked, never a silent fallback.

The default is the book's `instruction-data.json` in `../shared/data/` beside the project checkout (found from
this file's location, not from the working directory); `--data sample` picks the bundled sample on purpose.
A missing or unreadable file ends the benchmark with one `error:` line and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

from gpt_finetune.data.instructions import Record, load_records
from gpt_finetune.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[3]  # src/gpt_finetune/benchmarks/ -> the project checkout
BOOK_DATA = CHECKOUT.parent / "shared" / "data" / "instruction-data.json"
SAMPLE = "sample"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data PATH | sample`, its default stated in --help."""
    parser.add_argument(
        "--data",
        default=None,
        help=f"instruction JSON/JSONL file, or '{SAMPLE}' for the bundled sample (default: {BOOK_DATA})",
    )


def data_path(value: str | Path | None) -> Path:
    """The file `--data` names (None: the default, the book's data beside the checkout); it must exist."""
    if value is not None and str(value) == SAMPLE:
        return Path(str(resources.files("gpt_finetune.data") / "sample_instructions.json"))
    path = Path(value if value is not None else BOOK_DATA).expanduser().absolute()
    if not path.is_file():
        given = f"the default --data {BOOK_DATA}" if value is None else f"--data {value}"
        given += f" (= {path})" if value is not None and str(value) != str(path) else ""
        fail(
            f"{given}: no such file; pass --data PATH (e.g. the book's instruction-data.json) "
            f"or --data {SAMPLE} for the bundled sample"
        )
    return path


def read_data(value: str | Path | None) -> tuple[list[Record], Path]:
    """The validated records of the `--data` file, and its path."""
    path = data_path(value)
    try:
        return load_records(path), path
    except UserError as error:
        fail(str(error))


def fail(message: str) -> NoReturn:
    """One `error:` line on stderr, exit code 2 (argparse's code for bad arguments), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
