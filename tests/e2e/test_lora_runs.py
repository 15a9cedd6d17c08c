"""`train.py` with `task.lora`: the parameter summary shows the adapters, DDP on two CPU processes matches
one process, and a sweep over the rank trains one run per rank, each checkpoint holding its adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gpt_finetune.tasks.adapters import trainable_counts
from gpt_finetune.tasks.instruct import InstructionTuning

SHORT = (
    "experiment=quickstart",
    "trainer.max_epochs=1",
    "++trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "generate.enabled=false",
    "callbacks.validation_samples=null",
)


def train_losses(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [event.value for event in events.Scalars("train/loss")]


def adapters(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_ddp_lora_matches_one_process_and_logs_the_trainable_count(
    tmp_path: Path, run_train, tiny_base: Path
) -> None:
    lora = (f"model.weights={tiny_base}", "task.lora.r=4")
    single = run_train(*SHORT, *lora, "trainer=cpu", "data.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_train(
        *SHORT, *lora, "trainer=ddp_cpu", "data.batch_size=4", f"hydra.run.dir={tmp_path / 'ddp'}"
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # The summary at fit start counts the adapters as trainable, the frozen base as the rest.
    spec = {"size": "tiny", "pretrained": False, "weights": str(tiny_base)}
    trainable, total = trainable_counts(InstructionTuning(spec, lora={"r": 4}))
    assert trainable == 2 * 4 * (64 + 192 + 64 + 64 + 64 + 256 + 256 + 64)  # 2 blocks, 4 layers, rank 4
    assert f"{get_human_readable_count(trainable):<10} Trainable params" in single.stdout
    assert f"{get_human_readable_count(total):<10} Total params" in single.stdout

    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "ddp")
    assert len(one) == len(two) == 4 and one[0] != pytest.approx(one[-1], abs=1e-3)
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4
    saved = adapters(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert saved and all(".lora_" in name for name in saved)


@pytest.mark.slow
def test_a_sweep_over_the_rank_trains_one_lora_run_per_rank(
    tmp_path: Path, run_train, tiny_base: Path
) -> None:
    done = run_train(
        "-m",
        *SHORT,
        "logger=none",
        f"model.weights={tiny_base}",
        "task.lora.r=2,4",
        f"hydra.sweep.dir={tmp_path}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2
    for run, rank in zip(runs, (2, 4), strict=True):
        assert (run / "metrics.json").is_file(), run
        saved = adapters(run / "checkpoints" / "last.ckpt")
        ranks = {tensor.shape[0] for name, tensor in saved.items() if name.endswith("lora_A")}
        assert ranks == {rank}, (run.name, ranks)
        assert all(".lora_" in name for name in saved)
