"""Test-time classification reports: test_predictions.csv, confusion_matrix.png and a TensorBoard figure."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torchmetrics.functional.classification import multiclass_confusion_matrix

from gpt_finetune.artifacts import atomic_path, write_text
from gpt_finetune.data.classify_datamodule import ClassificationDataModule
from gpt_finetune.errors import UserError
from gpt_finetune.tasks.classify import Classification

log = logging.getLogger(__name__)


def confusion_figure(matrix: torch.Tensor, labels: list[str]) -> Figure:
    """A heat map of `matrix` (rows: true label, columns: predicted) with the count in each cell."""
    size = 1.2 + 0.9 * len(labels)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(labels))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels)
    axes.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    threshold = matrix.max().item() / 2
    for row, counts in enumerate(matrix.tolist()):
        for col, count in enumerate(counts):
            color = "white" if count > threshold else "black"
            axes.text(col, row, str(count), ha="center", va="center", color=color)
    return figure


def predictions_csv(texts: list[str], labels: list[str], targets: list[int], probs: torch.Tensor) -> str:
    """CSV text: text, label, predicted, then `prob_<label>` for each class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "predicted", *(f"prob_{name}" for name in labels)])
    for text, target, row in zip(texts, targets, probs.tolist(), strict=True):
        predicted = labels[max(range(len(row)), key=row.__getitem__)]
        writer.writerow([text, labels[target], predicted, *(f"{p:.6f}" for p in row)])
    return buffer.getvalue()


class TestPredictions(L.Callback):
    """After testing (best weights): test_predictions.csv, confusion_matrix.png and a TensorBoard figure."""

    def __init__(self, output_dir: str, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._indices: list[torch.Tensor] = []
        self._probs: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, Classification):
            raise UserError("callbacks=classify writes class predictions and needs task=classify")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._indices, self._probs = [], []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.enabled:
            self._indices.append(batch["index"].cpu())
            self._probs.append(outputs["logits"].float().softmax(dim=-1).cpu())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero or not self._probs:
            return
        # Lightning sets `trainer.datamodule` for each fit and test; the Trainer class does not declare it.
        datamodule = getattr(trainer, "datamodule", None)
        assert isinstance(pl_module, Classification) and isinstance(datamodule, ClassificationDataModule)
        examples = datamodule.splits["test"]
        indices, probs = torch.cat(self._indices), torch.cat(self._probs)
        targets = [examples[i].label for i in indices.tolist()]
        labels = pl_module.labels
        csv_text = predictions_csv([examples[i].text for i in indices.tolist()], labels, targets, probs)
        write_text(self.output_dir / "test_predictions.csv", csv_text)
        matrix = multiclass_confusion_matrix(probs.argmax(dim=-1), torch.tensor(targets), len(labels))
        figure = confusion_figure(matrix, labels)
        with atomic_path(self.output_dir / "confusion_matrix.png") as tmp:
            figure.savefig(tmp, format="png", dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "test/confusion_matrix", figure, trainer.global_step, close=False
                )
        trainer.callback_metrics["test/confusion_matrix"] = matrix  # rows: true label, columns: predicted
        log.info("wrote test_predictions.csv and confusion_matrix.png (%d test texts)", len(targets))
