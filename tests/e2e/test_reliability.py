"""Crash-safe resume, clean interruption, non-finite loss, determinism."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import lightning as L
import pytest
import torch
from child_signals import default_signal_handlers
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_finetune.callbacks.loss_guard import LossGuard
from gpt_finetune.config import bundled_path
from gpt_finetune.data.instruct_datamodule import InstructionDataModule
from gpt_finetune.errors import UserError
from gpt_finetune.tasks.instruct import InstructionTuning

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "experiment=quickstart",
    "trainer.max_epochs=2",
    "generate.enabled=false",
    "callbacks.validation_samples=null",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "model.dropout=0.1",  # resume must restore the random stream too
]
STEPS_PER_EPOCH = 12  # 102 training records of the bundled sample, batches of 8, last one dropped


@pytest.fixture
def train(run_train):
    """`train(run_dir, *overrides)`: the reliability run (`RUN`) into `run_dir`."""
    return lambda run_dir, *overrides: run_train(*RUN, f"hydra.run.dir={run_dir}", *overrides)


def start_and_wait_for_checkpoint(
    run_dir: Path, stderr: IO[str] | int = subprocess.DEVNULL
) -> subprocess.Popen:
    """Start a training process and return once its first step checkpoint (step 5) is on disk."""
    process = subprocess.Popen(
        [sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=default_signal_handlers,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    return process


def final_state(run_dir: Path) -> tuple[int, dict[str, torch.Tensor], float]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return checkpoint["global_step"], checkpoint["state_dict"], metrics["best_val/loss"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(
    tmp_path: Path, command_in_process
) -> None:
    # The killed run is a process; the whole and the resumed runs are the same command in-process.
    whole = command_in_process("train", *RUN, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    process = start_and_wait_for_checkpoint(tmp_path / "killed")
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    assert (
        torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    )
    resumed = command_in_process("train", f"resume={tmp_path / 'killed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    step, weights, val_loss = final_state(tmp_path / "whole")
    resumed_step, resumed_weights, resumed_val_loss = final_state(tmp_path / "killed")
    assert resumed_step == step == 24
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name  # exact on CPU: same batches, same order
    assert resumed_val_loss == val_loss
    steps = [
        e.step
        for e in EventAccumulator(str(tmp_path / "killed" / "tensorboard")).Reload().Scalars("train/loss")
    ]
    assert max(steps) == 23  # the TensorBoard curve continues to the end


@pytest.mark.slow
def test_sigint_saves_a_loadable_checkpoint_and_no_partial_artifacts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_and_wait_for_checkpoint(run_dir)
    # With Lightning's default checkpoint IO, a SIGINT landing as it closed the file (fsspec) was swallowed:
    # 1 run in ~8. StreamingCheckpointIO writes a plain file (16 of 16 first presses caught), but should a
    # press be lost, press again as a user would; once Lightning has caught one, it ignores the rest.
    for _ in range(30):
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)
            break
    assert process.returncode != 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    log = (run_dir / "train.log").read_text()
    assert f"interrupted at step {checkpoint['global_step']}" in log and f"resume={run_dir}" in log
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name == "metrics.json"]
    assert leftovers == []


@pytest.mark.slow
def test_sigterm_exits_143_naming_the_resume_command_and_the_run_resumes(tmp_path: Path, run_train) -> None:
    run_dir = tmp_path / "run"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = start_and_wait_for_checkpoint(run_dir, stderr)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    stderr_text = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr_text
    assert [line for line in stderr_text.splitlines() if line.startswith("error:")] == [
        f"error: stopped by SIGTERM; resume with: python train.py resume={run_dir}"
    ]
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= stopped_at < STEPS_PER_EPOCH
    assert f"interrupted at step {stopped_at}" in (run_dir / "train.log").read_text()
    unfinished = [
        p.relative_to(run_dir)
        for p in run_dir.rglob("*")
        if p.name.endswith((".tmp", ".part", ".partial", ".incomplete"))
        or p.name in ("metrics.json", "test_responses.json")
    ]
    assert unfinished == []

    # Stop at the end of the first epoch (12 steps): its validation gives early stopping its val/loss.
    resumed = run_train(f"resume={run_dir}", f"trainer.max_steps={STEPS_PER_EPOCH}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert finished["global_step"] == STEPS_PER_EPOCH
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == STEPS_PER_EPOCH


class PoisonAtStep(L.Callback):
    """Test-only: turn a weight into NaN before the given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.transformer.ln_f.weight[0] = float("nan")


def test_a_run_stopping_before_its_first_validation_keeps_one_current_last_checkpoint(
    tmp_path: Path, command_in_process
) -> None:
    # Early stopping must not demand val/loss, and Lightning's save_last must not add last-v1.ckpt.
    overrides = ("trainer.max_steps=3", "callbacks.last_checkpoint.every_n_train_steps=50")
    done = command_in_process("train", *RUN, f"hydra.run.dir={tmp_path / 'run'}", *overrides)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3


def test_non_finite_loss_stops_with_one_line_naming_the_step(quiet_trainer) -> None:
    L.seed_everything(0)
    data = InstructionDataModule(path=bundled_path("sample_instructions.json"), batch_size=8)
    task = InstructionTuning(
        model={"size": "tiny", "pretrained": False, "context_length": 256}, optimizer={"lr": 1e-3}
    )
    trainer = quiet_trainer(
        max_steps=10,
        callbacks=[PoisonAtStep(3), LossGuard()],
    )
    with pytest.raises(
        UserError, match=r"non-finite training loss \(nan\) at step 4 .*lower optimizer\.lr"
    ) as error:
        trainer.fit(task, datamodule=data)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_same_seed_gives_identical_losses(tmp_path: Path, train) -> None:
    losses = []
    for name in ("a", "b"):
        assert (
            train(
                tmp_path / name,
                "trainer.max_steps=8",
                "trainer.val_check_interval=4",
                "trainer.deterministic=true",
            ).returncode
            == 0
        )
        events = EventAccumulator(str(tmp_path / name / "tensorboard")).Reload()
        losses.append([e.value for e in events.Scalars("train/loss")])
    assert len(losses[0]) == 8 and losses[0] == losses[1]
