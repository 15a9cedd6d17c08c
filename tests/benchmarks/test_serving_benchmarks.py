"""The serving and one-stream benchmarks run end to end on the tiny model and print their tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt_finetune.benchmarks import generation, serving

RECORDS = [{"instruction": f"Repeat {i}.", "input": "", "output": f"{i} and {i}"} for i in range(40)]


def records_file(folder: Path) -> Path:
    path = folder / "records.json"
    path.write_text(json.dumps(RECORDS))
    return path


def table(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ")
    ]


def test_serving_rows_lose_nothing_and_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--size", "tiny", "--requests", "3", "--rates", "20", "--max-new-tokens", "4", "--no-llama-cpp"]
    serving.main([*argv, "--data", str(records_file(tmp_path))])
    header, *rows = table(capsys.readouterr().out)
    assert header[:3] == ["rate req/s", "server", "generated tokens/s"]
    assert [row[1] for row in rows] == ["continuous batching", "per-batch", "one at a time"]
    assert [row[7] for row in rows] == ["0", "0", "0"]  # nothing lost
    assert [row[8] for row in rows] == ["–", "3/3", "3/3"]  # the same greedy text in every row


def test_single_stream_rows_agree_with_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--size",
        "tiny",
        "--prompts",
        "1",
        "--only-single",
        "--single-prompts",
        "1",
        "--single-tokens",
        "6",
    ]
    generation.main([*argv, "--data", str(records_file(tmp_path))])
    rows = {row[0]: row for row in table(capsys.readouterr().out)[1:]}
    assert rows["ours, fp32"][3] == "6/6"
    assert rows["transformers, fp32"][3] == "6/6"  # the same greedy tokens
    for name in rows:
        if name.startswith("llama.cpp, f32"):
            assert rows[name][3] == "6/6"
