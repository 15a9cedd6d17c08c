"""What a run tests and reports: `test_on: best | last`, and a monitored value even without validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.tasks.instruct import InstructionTuning

ROOT = Path(__file__).resolve().parents[2]
FAST = ("experiment=quickstart", "generate.enabled=false")


@pytest.fixture
def train(command_in_process):
    """`train(run_dir, *overrides)`: a quickstart `train.py` run (in-process) that must succeed; its
    metrics.json."""

    def train_run(run_dir: Path, *overrides: str) -> dict:
        done = command_in_process("train", *FAST, f"hydra.run.dir={run_dir}", *overrides)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((run_dir / "metrics.json").read_text())

    return train_run


def loss_on_test_split(checkpoint: Path) -> float:
    """The test loss of a checkpoint's weights, computed here from the checkpoint alone."""
    task = InstructionTuning.load_from_checkpoint(checkpoint, weights_only=True)
    data = InstructionDataModule(**torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"])
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    return trainer.test(task, datamodule=data, verbose=False)[0]["test/loss"]


@pytest.mark.slow
def test_test_on_last_tests_the_final_weights_not_the_best(tmp_path: Path, train) -> None:
    # monitor_mode=max makes the first validation (step 12, the highest loss) "best": best != final.
    metrics = train(
        tmp_path,
        "trainer.max_epochs=2",
        "test_on=last",
        "monitor_mode=max",
        "callbacks.validation_samples=null",
    )
    assert metrics["test_on"] == "last" and metrics["best_checkpoint"].endswith("best-step12.ckpt")
    assert metrics["tested_checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    final = loss_on_test_split(tmp_path / "checkpoints" / "last.ckpt")
    best = loss_on_test_split(Path(metrics["best_checkpoint"]))
    assert final != pytest.approx(best, rel=1e-3)
    assert metrics["test/loss"] == pytest.approx(final, rel=1e-6)


def test_a_run_ending_before_its_first_validation_validates_its_final_weights_once(
    tmp_path: Path, train
) -> None:
    metrics = train(tmp_path, "trainer.max_steps=3", "callbacks=none", "logger=none")
    assert metrics["global_step"] == 3
    assert math.isfinite(metrics["best_val/loss"]) and metrics["best_val/loss"] == metrics["val/loss"]


def test_evaluate_finds_the_tested_checkpoint_of_a_test_on_last_run(tmp_path: Path) -> None:
    from gpt_finetune.evaluation.run_dir import find_checkpoint

    (tmp_path / "checkpoints").mkdir()
    best, last = tmp_path / "checkpoints" / "best-step12.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    best.write_bytes(b"")
    last.write_bytes(b"")
    metrics = {"best_checkpoint": str(best), "tested_checkpoint": str(last)}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert find_checkpoint(tmp_path) == last
    (tmp_path / "metrics.json").write_text(json.dumps({"best_checkpoint": str(best)}))  # an older run
    assert find_checkpoint(tmp_path) == best
