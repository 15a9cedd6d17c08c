"""The instruction loss is a mean over every target token of the effective batch, however it is split."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from gpt_finetune.data.collate import collate_instructions
from gpt_finetune.tasks.instruct import InstructionTuning
from gpt_finetune.tasks.loss import masked_lm_loss

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"size": "tiny", "pretrained": False, "context_length": 64}


class CapturesGradients(InstructionTuning):
    """Keeps the gradients the optimizer is about to apply."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.applied = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}


def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 50000, (n,), generator=g).tolist() for n in (3, 30, 7, 12, 25, 4, 9, 18)]


def applied_gradients(quiet_trainer, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    task = CapturesGradients(model=SPEC)
    loader = DataLoader(sequences(), batch_size=batch_size, collate_fn=collate_instructions)
    trainer = quiet_trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(task, train_dataloaders=loader)
    return task.applied


def test_accumulation_gives_the_gradients_of_the_whole_batch_token_mean(quiet_trainer) -> None:
    whole = applied_gradients(quiet_trainer, batch_size=8, accumulate=1)
    accumulated = applied_gradients(quiet_trainer, batch_size=2, accumulate=4)

    torch.manual_seed(0)
    reference = InstructionTuning(model=SPEC)
    masked_lm_loss(reference.model, **collate_instructions(sequences())).backward()
    # float32 sums in another order: a few ulps apart (atol 1e-7 failed by 1.5e-7 on an element of 4e-3 here);
    # the pitfall below is 1e-3 apart.
    for name, param in reference.named_parameters():
        torch.testing.assert_close(whole[name], param.grad, rtol=1e-5, atol=5e-7)
        torch.testing.assert_close(accumulated[name], param.grad, rtol=1e-5, atol=5e-7)

    # The known pitfall, a mean of per-micro-batch means, gives different gradients: the test can fail.
    naive = InstructionTuning(model=SPEC)
    naive.load_state_dict(reference.state_dict())
    for start in range(0, 8, 2):
        (masked_lm_loss(naive.model, **collate_instructions(sequences()[start : start + 2])) / 4).backward()
    grad = dict(naive.named_parameters())["model.transformer.ln_f.weight"].grad
    assert not torch.allclose(grad, whole["model.transformer.ln_f.weight"], rtol=1e-3)


def train_losses(run: Callable[..., Any], tmp_path: Path, name: str, *overrides: str) -> list[float]:
    """The train/loss curve of a short quickstart run by `run(*args)` (a process, or in-process)."""
    run_dir = tmp_path / name
    done = run(
        "experiment=quickstart",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks=none",
        "generate.enabled=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [event.value for event in events.Scalars("train/loss")]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path: Path, run_train, command_in_process) -> None:
    in_process = functools.partial(command_in_process, "train")  # the two ranks are processes
    single = train_losses(in_process, tmp_path, "single", "trainer=cpu", "data.batch_size=8")
    ddp = train_losses(run_train, tmp_path, "ddp", "trainer=ddp_cpu", "data.batch_size=4")
    assert len(single) == len(ddp) == 4
    for a, b in zip(single, ddp, strict=True):
        assert abs(a - b) <= 1e-4
