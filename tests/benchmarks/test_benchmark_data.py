"""Benchmarks measure on the data file they are given and say which; a missing file is one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gpt_finetune.benchmarks import data_file, generation, lora, matrix, serving, training
from gpt_finetune.benchmarks.data_file import data_path

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i}"} for i in range(20)]
# What each benchmark would start with once its data is read: must never run on bad --data.
WORK = {generation: "GPT", training: "run_rows", matrix: "run_reference", lora: "run_pair", serving: "GPT"}
ARGV = {generation: [], training: [], matrix: ["--accelerator", "cpu"], lora: [], serving: []}


def no_work(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the benchmark started work before checking --data")


def records_file(folder: Path, content: object = RECORDS) -> Path:
    path = folder / "records.json"
    path.write_text(json.dumps(content))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], module: ModuleType, *argv: str) -> str:
    """The benchmark's stderr for `argv`; it must exit 2 with one `error:` line, having printed nothing."""
    with pytest.raises(SystemExit) as exit_info:
        module.main([*ARGV[module], *argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("module", list(WORK), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_missing_data_file_is_one_error_line_before_any_work(
    module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(module, WORK[module], no_work)
    missing = tmp_path / "absent.json"
    error = one_error_line(capsys, module, "--data", str(missing))
    assert error.startswith(f"error: --data {missing}: no such file; ")
    assert "pass --data PATH" in error and "--data sample" in error  # the fix, not a silent fallback

    monkeypatch.setattr(data_file, "BOOK_DATA", tmp_path / "shared" / "instruction-data.json")
    error = one_error_line(capsys, module)  # the stated default is checked as well
    assert error.startswith(f"error: the default --data {tmp_path / 'shared' / 'instruction-data.json'}: ")

    bad = records_file(tmp_path, RECORDS[0])  # an object where the list of records belongs
    assert f"error: {bad}: holds one JSON object" in one_error_line(capsys, module, "--data", str(bad))


@pytest.mark.parametrize("module", list(WORK), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_default_is_the_books_data_beside_the_checkout_and_help_says_so(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ROOT.parent / "shared" / "data" / "instruction-data.json" == data_file.BOOK_DATA  # not the cwd
    monkeypatch.setenv("COLUMNS", "400")  # argparse would wrap a long path
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert f"(default: {data_file.BOOK_DATA})" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_missing_data_exits_2_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpt_finetune.benchmarks.generation", "--data", "absent.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: --data absent.json (= {tmp_path / 'absent.json'}): no such file; pass --data PATH "
        "(e.g. the book's instruction-data.json) or --data sample for the bundled sample"
    ]


def test_generation_prints_the_data_file_it_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = records_file(tmp_path)
    argv = ["--size", "tiny", "--prompts", "3", "--new-tokens", "2", "--reference-prompts", "1"]
    generation.main([*argv, "--batch-size", "3", "--single-prompts", "0", "--data", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"data: {path}"
    assert out[1].startswith("tiny, random weights") and "3 prompts" in out[1]


def test_training_and_matrix_use_the_given_file(tmp_path: Path) -> None:
    path = records_file(tmp_path)
    sequences, source = training.load_train_sequences(str(path))
    assert source == path and len(sequences) == 17  # the first 85 % of 20
    args = matrix.parse_args(["--accelerator", "cpu", "--data", str(path), "--out", str(tmp_path / "m")])
    overrides = matrix.train_overrides(matrix.Cell("tiny", "32-true", 1, False), args, tmp_path / "cell")
    assert f"data.path={path}" in overrides and "data=sample" not in overrides
    args = matrix.parse_args(["--accelerator", "cpu", "--data", "sample", "--out", str(tmp_path / "m")])
    overrides = matrix.train_overrides(matrix.Cell("tiny", "32-true", 1, False), args, tmp_path / "cell")
    assert "data=sample" in overrides and not any(o.startswith("data.path=") for o in overrides)
    assert args.data == data_path("sample") and args.data.name == "sample_instructions.json"


@pytest.mark.slow
def test_lora_benchmark_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "tiny", "--precisions", "fp32", "--steps", "1", "--warmup", "0", "--batch-size", "2"]
    lora.main([*argv, "--rank", "4", "--data", str(records_file(tmp_path))])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert [row[0] for row in rows] == ["| tiny, fp32, full", "| tiny, fp32, LoRA"]
    full_mb, lora_mb = (float(row[-1].rstrip(" |")) for row in rows)
    assert 0 < lora_mb < full_mb / 20  # adapters + their AdamW state only
