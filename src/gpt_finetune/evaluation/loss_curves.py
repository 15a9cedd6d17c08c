"""The book's loss plot: training and validation loss against steps, with epochs on a second x axis."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from gpt_finetune.evaluation.tensorboard_io import Series

TRAIN, VAL = "train/loss", "val/loss"


def steps_per_epoch(epochs: Series) -> int | None:
    """Optimizer steps in the first epoch, from Lightning's `epoch` scalar; None if it never reached 1."""
    return next((step for step, epoch in epochs if epoch >= 1), None)


def plot_losses(curves: Mapping[str, Series]) -> bytes | None:
    """PNG bytes of the train/val loss curves; None when the run logged neither."""
    train, val = curves.get(TRAIN, []), curves.get(VAL, [])
    if not train and not val:
        return None
    figure = Figure(figsize=(6, 3.6), dpi=120, layout="constrained")
    ax = figure.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="Training loss")
    if val:
        ax.plot(*zip(*val, strict=True), linestyle="-.", marker="o", markersize=3, label="Validation loss")
    ax.set_xlabel("Step")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
    per_epoch = steps_per_epoch(curves.get("epoch", []))
    if per_epoch:
        # Lightning logs step s after s + 1 optimizer steps: epoch = (s + 1) / steps per epoch.
        top = ax.secondary_xaxis(
            "top",
            functions=(lambda s: (np.asarray(s) + 1) / per_epoch, lambda e: np.asarray(e) * per_epoch - 1),
        )
        top.set_xlabel("Epoch")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
