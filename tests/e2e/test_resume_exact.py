"""Resume is exact (bit-identical weights and metrics on CPU) after an interruption in a later epoch,
mid-epoch, with dropout, length grouping, packing and gradient accumulation, whatever the signal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from command_lines import train_in_process
from session_builds import built_once

ROOT = Path(__file__).resolve().parents[2]
RUN = (
    "experiment=quickstart",
    "trainer.max_epochs=2",  # 12 batches an epoch (102 records, batches of 8)
    "generate.enabled=false",
    "callbacks.validation_samples=null",
    "callbacks.last_checkpoint.every_n_train_steps=10",
    "model.dropout=0.1",  # resume must restore the random stream too
)
GROUPED = ("data.group_by_length=true",)
# name: (extra overrides, epoch and batch at whose start the signal comes, signal, step of last.ckpt)
CASES = {
    # The second epoch's order must come back: Lightning builds the iterator before it sets the epoch.
    "sigkill-2nd-epoch-mid-epoch": ((), 1, 9, "SIGKILL", 20),
    # Killed at batch 9 of the second epoch; with 6 steps an epoch, last.ckpt is from step 10 (batch 8).
    "sigkill-2nd-epoch-grouped-accumulated": (
        (*GROUPED, "trainer.accumulate_grad_batches=2"),
        1,
        9,
        "SIGKILL",
        10,
    ),
    # Stopped after batch 8 of 12, 3 micro-batches past the step at batch 5: those are trained on again.
    "sigterm-mid-accumulation": ((*GROUPED, "trainer.accumulate_grad_batches=5"), 1, 7, "SIGTERM", 4),
    "sigint-mid-accumulation": ((*GROUPED, "trainer.accumulate_grad_batches=5"), 1, 7, "SIGINT", 4),
    # Packing: 50 rows of 128 tokens in batches of 4, 12 batches an epoch as above; the rows' order resumes.
    "packing-sigkill-2nd-epoch-accumulated": (
        ("data.packing=true", "data.batch_size=4", "trainer.accumulate_grad_batches=2"),
        1,
        9,
        "SIGKILL",
        10,
    ),
    # LoRA: last.ckpt holds the adapters and their optimizer state only; the frozen base comes back from
    # model.weights on resume. Dropout on the adapters' input draws from the restored random stream too.
    "lora-sigkill-2nd-epoch-mid-epoch": (
        ("model.weights={base}", "task.lora.r=4", "task.lora.dropout=0.1"),
        1,
        9,
        "SIGKILL",
        20,
    ),
}


def outcome(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The final weights and the figures metrics.json reports."""
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return weights, {k: metrics[k] for k in ("global_step", "best_val/loss", "test/loss")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Path]:
    """Uninterrupted runs, one per case's extra overrides, trained once per session when first asked for
    (in-process: the interrupted run is the process a signal stops)."""

    def build(run_dir: Path, extra: tuple[str, ...]) -> None:
        train_in_process(*RUN, *extra, f"hydra.run.dir={run_dir}")

    class Runs(dict):
        def __missing__(self, extra: tuple[str, ...]) -> Path:
            name = "whole-" + hashlib.sha1("\n".join(extra).encode()).hexdigest()[:12]
            self[extra] = built_once(tmp_path_factory, name, lambda run_dir: build(run_dir, extra))
            return self[extra]

    return Runs()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_interrupted_run_resumes_to_the_uninterrupted_weights(
    case: str,
    tmp_path: Path,
    uninterrupted: dict[tuple[str, ...], Path],
    run_train,
    command_in_process,
    tiny_base: Path,
) -> None:
    overrides, epoch, batch, signum, saved_step = CASES[case]
    extra = tuple(override.format(base=tiny_base) for override in overrides)
    interrupt = (
        "+callbacks.interrupt._target_=train_interrupts.SignalAt",
        f"+callbacks.interrupt.epoch={epoch}",
        f"+callbacks.interrupt.batch={batch}",
        f"+callbacks.interrupt.signum={signum}",
    )
    stopped = run_train(*RUN, *extra, *interrupt, f"hydra.run.dir={tmp_path}")
    assert stopped.returncode != 0 and not (tmp_path / "metrics.json").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_step

    resumed = command_in_process("train", f"resume={tmp_path}", "++callbacks.interrupt=null")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    weights, metrics = outcome(uninterrupted[extra])
    resumed_weights, resumed_metrics = outcome(tmp_path)
    assert resumed_metrics == metrics
    if any(override.startswith("task.lora.r=") for override in extra):  # adapters only were saved
        assert weights and all(".lora_" in name for name in weights)
    for name, tensor in weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
