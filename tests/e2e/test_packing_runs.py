"""`data.packing=true` through the whole training command: in-process (fast tier), as a user runs it, with
compile + bf16 + accumulation, and on 2 DDP processes with a packed row count that does not divide evenly."""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path

import pytest
from ddp_faults import end_job, train_job
from hydra import compose, initialize_config_dir

from gpt_finetune.train import run

CONF = Path(__file__).resolve().parents[2] / "conf"
PACKED = ("experiment=quickstart", "data.packing=true")  # conf/data/sample.yaml: rows of 128 tokens


def test_packed_run_trains_tests_and_reports_throughput(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [
        *PACKED,
        f"output_dir={tmp_path}",
        "trainer.max_steps=12",
        "trainer.val_check_interval=6",
        "generate.max_new_tokens=4",
        "callbacks.validation_samples.max_new_tokens=4",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with caplog.at_level(logging.INFO, logger="gpt_finetune.data.instruct_datamodule"):
        best = run(cfg)
    assert "data: packed 102 train records into 50 rows of up to 128 tokens" in caplog.text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(best) and math.isfinite(metrics["test/loss"]) and metrics["global_step"] == 12
    assert metrics["records"] == {"train": 102, "test": 12, "val": 6}  # records, not rows
    assert metrics["train/target_tokens_per_s"] > 0 and metrics["train/device/flops_per_sec"] > 0
    assert len(json.loads((tmp_path / "test_responses.json").read_text())) == 12


@pytest.mark.slow
def test_quickstart_with_packing_as_a_user_runs_it(tmp_path: Path, run_train) -> None:
    done = run_train(*PACKED, "generate.max_new_tokens=16", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 48  # 8 epochs of 6 batches of 8 rows (50 rows, the short batch dropped)
    assert metrics["best_val/loss"] < 8 and math.isfinite(metrics["test/loss"])  # from ~10.8 at random init
    assert (tmp_path / "test_responses.json").is_file()


@pytest.mark.slow
def test_packing_with_compile_bf16_and_accumulation(tmp_path: Path, run_train) -> None:
    done = run_train(
        *PACKED,
        "task.compile=true",
        "trainer.precision=bf16-mixed",
        "trainer.accumulate_grad_batches=2",
        "++trainer.max_steps=3",
        "trainer.max_epochs=1",
        "generate.enabled=false",
        "callbacks.validation_samples=null",
        f"hydra.run.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train/loss"])


@pytest.mark.slow
def test_two_ranks_finish_on_an_uneven_packed_split(tmp_path: Path) -> None:
    """50 packed rows in global batches of 2 x 4: 6 whole global batches an epoch, 2 rows left over."""
    log = tmp_path / "log.txt"
    job = train_job(
        log,
        "data.packing=true",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "callbacks=none",
        "generate.enabled=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    try:
        code = job.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process packed run hung: {log.read_text()[-2000:]}")
    finally:
        end_job(job)  # no rank left behind, even after a hang
    assert code == 0, log.read_text()[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 12
