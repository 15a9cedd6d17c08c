"""Hydra multirun: impossible combinations fail in one line and the sweep goes on; Optuna runs trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "experiment=quickstart",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "callbacks=none",
    "logger=none",
    "generate.enabled=false",
]


@pytest.fixture
def multirun(run_train, tmp_path: Path):
    """`multirun(*overrides)`: `train.py -m` with the fast settings, sweeping into tmp_path."""
    return lambda *overrides: run_train("-m", *FAST, f"hydra.sweep.dir={tmp_path}", *overrides, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the combinations a CPU-only machine cannot run")
def test_device_by_precision_sweep_runs_every_combination(multirun, tmp_path: Path) -> None:
    done = multirun("trainer=cpu,gpu", "trainer.precision=32-true,16-mixed")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    combos = {
        (run.name.split("_")[0], "trainer=gpu" in run.name, "16-mixed" in run.name): run for run in runs
    }
    assert sorted(name for name, _, _ in combos) == ["0", "1", "2", "3"]
    assert sorted((gpu, half) for _, gpu, half in combos) == [
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    ]
    for (_, gpu, half), run in combos.items():
        if not gpu and not half:
            assert (run / "metrics.json").is_file()
            continue
        reason = (run / "error.txt").read_text()
        assert reason.count("\n") == 1 and not (run / "metrics.json").exists()
        assert ("no CUDA device" in reason) if gpu else ("needs a GPU" in reason)
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_optuna_preset_runs_trials_and_reports_the_best(multirun, tmp_path: Path) -> None:
    done = multirun("hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [p for p in tmp_path.iterdir() if p.is_dir() and (p / "metrics.json").is_file()]
    assert len(trials) == 2
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_value" in best and "optimizer.lr" in best


@pytest.mark.slow
def test_a_job_failing_a_lightning_check_writes_error_txt_and_the_sweep_goes_on(
    multirun, tmp_path: Path
) -> None:
    # val_check_interval=-1 passes our checks; Lightning's Trainer raises MisconfigurationException (which
    # Hydra's instantiate wraps), once ending the whole sweep with exit 2.
    done = multirun("trainer.val_check_interval=-1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    bad, good = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    reason = (bad / "error.txt").read_text()
    assert reason.count("\n") == 1 and "invalid value -1 for val_check_interval" in reason
    assert not (bad / "metrics.json").exists() and (good / "metrics.json").is_file()
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_optuna_trials_that_end_before_their_first_validation_still_report_a_value(
    multirun, tmp_path: Path
) -> None:
    # 2 steps of a 12-batch epoch validated once an epoch: no validation ran, so the final weights are
    # validated once (a trial returning None failed, and an all-failed study ended in a traceback).
    done = multirun("hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer.val_check_interval=1.0")
    assert done.returncode == 0, done.stderr[-3000:]
    results = (tmp_path / "optimization_results.yaml").read_text()
    best = float(results.split("best_value:")[1].split()[0])
    assert 0 < best < 20  # a cross-entropy of a 50,257-token vocabulary, not NaN


def test_long_sweep_folder_names_are_cut_with_a_hash_of_the_whole() -> None:
    from gpt_finetune.config import short_name

    assert short_name("trainer=cpu,seed=1") == "trainer=cpu,seed=1"
    long = ",".join(f"optimizer.key_{i}=0.123456789" for i in range(30))
    assert len(short_name(long)) == 200 and short_name(long) != short_name(long + "1")
    assert short_name(long).startswith(long[:100])
    assert short_name("model.weights=/tmp/base,task.lora.r=2") == "model.weights=_tmp_base,task.lora.r=2"
