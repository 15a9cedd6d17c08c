"""Stop a run, in one line, when its loss goes non-finite or explodes; the last good checkpoint stays."""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from gpt_finetune.errors import UserError


class LossGuard(L.Callback):
    """Raise a one-line error on a NaN/inf training loss, or (optionally) one `explode_factor` times its mean.

    Checkpoint callbacks run after this one, so the bad step is never saved.
    """

    def __init__(self, explode_factor: float | None = None, warmup_steps: int = 20) -> None:
        self.explode_factor = explode_factor
        self.warmup_steps = warmup_steps
        self._mean: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        value, step = float(loss), trainer.global_step
        where = f"at step {step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        if not math.isfinite(value):
            raise UserError(
                f"non-finite training loss ({value}) {where}; lower optimizer.lr, set "
                "trainer.gradient_clip_val=1.0 or use trainer.precision=32-true, then resume from last.ckpt"
            )
        factor, mean = self.explode_factor, self._mean
        if factor is not None and mean is not None and step > self.warmup_steps and value > factor * mean:
            raise UserError(
                f"training loss exploded to {value:.3g} {where}, {value / mean:.1f}x its running "
                "mean; lower optimizer.lr or set trainer.gradient_clip_val=1.0"
            )
        self._mean = value if self._mean is None else 0.9 * self._mean + 0.1 * value
