"""What a run prints: no adverts or irrelevant warnings, and progress while test responses are generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader

from gpt_finetune.evaluation.responses import generate_responses
from gpt_finetune.model import GPT
from gpt_finetune.tasks.instruct import InstructionTuning

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [{"instruction": f"Name a colour ({i}).", "input": "", "output": "red"} for i in range(5)]
# Each arises on every normal run unless removed where it arises (gpt_finetune.console, checkpointing).
NOISE = ("💡 Tip", "litlogger", "Total FLOPs", "Total Flops", "`weights_only` was not set", "LeafSpec")


def test_generated_responses_report_progress_on_stderr(tiny_model: GPT, capfd: pytest.CaptureFixture) -> None:
    generate_responses(tiny_model, RECORDS, max_new_tokens=2, batch_size=2, progress=True)
    err = capfd.readouterr().err
    assert "responses" in err and "2/5" in err and "4/5" in err and "5/5" in err, err  # one step per batch

    generate_responses(tiny_model, RECORDS, max_new_tokens=2, batch_size=2)  # validation samples: no bar
    assert capfd.readouterr().err == ""


class GenerateAfterTesting(L.Callback):
    """Generate as TestResponses does, while Lightning's rich bar is still live."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float | None]] = []

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert trainer.progress_bar_callback.progress.live.is_started
        generate_responses(
            pl_module.model, RECORDS, max_new_tokens=2, batch_size=2, progress=True, trainer=trainer
        )
        self.seen = [
            (t.description, t.completed, t.total) for t in trainer.progress_bar_callback.progress.tasks
        ]


def test_inside_a_run_responses_are_a_row_of_lightnings_rich_bar(capfd: pytest.CaptureFixture) -> None:
    task = InstructionTuning(model={"size": "tiny", "pretrained": False, "context_length": 32})
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "targets": torch.ones(2, 8, dtype=torch.long)}
    generating = GenerateAfterTesting()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[generating, RichProgressBar()],
    )
    trainer.test(task, dataloaders=DataLoader([batch], batch_size=None))

    assert ("Responses", 5, 5) in generating.seen  # no second live display: rich allows one at a time
    assert "responses:" not in capfd.readouterr().err  # and no tqdm bar fighting the rich one


@pytest.mark.slow
def test_a_quickstart_run_prints_no_advert_or_irrelevant_warning(tmp_path: Path, run_train) -> None:
    done = run_train(
        "experiment=quickstart",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "generate.max_new_tokens=2",
        "callbacks.validation_samples.max_new_tokens=2",
    )
    output: Any = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Total params" in output  # the model summary is still there, without its FLOPs
    assert [noise for noise in NOISE if noise in output] == [], output[-5000:]
