"""The packing benchmark checks --data before any work and packs batches as `data.packing=true` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpt_finetune.benchmarks import packing, training
from gpt_finetune.data.collate import IGNORE_INDEX


def no_work(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the benchmark started work before checking --data")


def test_missing_data_file_is_one_error_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(packing, "run_rows", no_work)
    with pytest.raises(SystemExit) as exit_info:
        packing.main(["--data", str(tmp_path / "absent.json")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: --data {tmp_path / 'absent.json'}: ")


def test_packed_batches_hold_every_record_once_without_cross_record_targets(tmp_path: Path) -> None:
    records = [
        {"instruction": f"Repeat {i} " * (1 + i % 7), "input": "", "output": f"{i}"} for i in range(40)
    ]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    seqs, _ = training.load_train_sequences(str(path))  # 34 records
    batches = training.packed_batches(seqs, 128, 1, seed=0, n=100)  # batches of one row: none dropped
    assert 1 < len(batches) < len(seqs)  # records share rows
    assert sum(training.batch_records(b) for b in batches) == len(seqs)
    targets = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
    assert targets == sum(len(s) for s in seqs)  # one target a token: the next one, or end-of-text
    assert all(b["input_ids"].shape[1] <= 128 for b in batches)
    names = [row.name for row in packing.packing_rows(8, [512, 1024], 1)]
    assert names == [
        "book batching, batch 8",
        "length-grouped, batch 8",
        "packed rows of 512, batch 1",
        "packed rows of 1024, batch 1",
    ]
