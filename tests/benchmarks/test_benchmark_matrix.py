"""The benchmark matrix runs real train.py cells and a reference loop, and keeps impossible cells' reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_finetune.benchmarks import matrix
from gpt_finetune.benchmarks.data_file import data_path


@pytest.mark.slow
def test_matrix_table_has_a_measured_row_per_cell_and_reasons_for_impossible_ones(tmp_path: Path) -> None:
    out = tmp_path / "matrix"
    argv = ["--sizes", "tiny", "--precisions", "32-true,16-mixed", "--steps", "12", "--accelerator", "cpu"]
    matrix.main([*argv, "--data", "sample", "--out", str(out)])

    written = (out / "matrix.md").read_text().splitlines()
    assert written[-1].startswith(f"data: {data_path('sample')}; batch 8 per device, 12 steps")
    rows = [line.split("|")[1:-1] for line in written[2:] if line.startswith("|")]
    rows = [[cell.strip() for cell in row] for row in rows]
    assert [row[:4] for row in rows] == [
        ["tiny", "32-true", "1", "reference: transformers loop"],
        ["tiny", "32-true", "1", "off"],
        ["tiny", "16-mixed", "1", "reference: transformers loop"],
        ["tiny", "16-mixed", "1", "off"],
    ]
    for row in rows[:2]:  # samples/s, tokens/s, target tokens/s, MFU, peak GiB
        samples, tokens, targets = (float(value.replace(",", "")) for value in row[4:7])
        assert 0 < targets < tokens and samples > 0
        assert row[7] == "n/a" and float(row[8]) > 0  # no MFU without a known peak (CPU)
    assert rows[1][9].endswith("x")  # speed against the reference
    assert rows[2][4] == "the reference loop runs 32-true and bf16-mixed"
    assert rows[3][4] == "trainer.precision=16-mixed needs a GPU; on a CPU use bf16-mixed or 32-true"
    assert (out / "tiny_32-true_1dev" / "metrics.json").is_file()
    assert not list((out / "tiny_32-true_1dev").rglob("*.ckpt"))  # no checkpoint write in the measurement
