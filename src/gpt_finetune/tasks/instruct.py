"""Instruction tuning: GPT-2 with next-token cross-entropy over the targets that are not ignored."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from gpt_finetune.model.build import build_gpt
from gpt_finetune.tasks.loss import masked_lm_loss_sum
from gpt_finetune.tasks.optim import DecayOn, adamw, warmup_cosine


class InstructionTuning(L.LightningModule):
    """A GPT built from `model` (the `model/` config spec); `prompt_style` is saved in every checkpoint."""

    def __init__(
        self,
        model: dict[str, Any],
        prompt_style: str = "alpaca",
        lr: float = 5e-5,
        weight_decay: float = 0.1,
        decay_on: DecayOn = "all",
        betas: tuple[float, float] = (0.9, 0.999),
        fused_adamw: bool | None = None,
        warmup_steps: int = 0,
        cosine: bool = False,
        min_lr_ratio: float = 0.1,
        head_on_targets_only: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_gpt(**model)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self._step_started = 0.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss_sum, count = masked_lm_loss_sum(
            self.model,
            batch["input_ids"],
            batch["targets"],
            head_on_targets_only=self.hparams.head_on_targets_only,
        )
        loss = loss_sum / count.clamp(min=1)
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
            self._train_tokens = int(count)
        else:
            # Token-weighted mean over the whole split, not a mean of per-batch means.
            getattr(self, f"{stage}_loss").update(loss.detach(), weight=count)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_loss")
        loss = metric.compute()
        metric.reset()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=50)), sync_dist=True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0:
            self.log("train/tokens_per_s", self._train_tokens / elapsed, batch_size=1)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        optimizer = adamw(self.model, h.lr, h.weight_decay, h.decay_on, h.betas, h.fused_adamw)
        if h.warmup_steps == 0 and not h.cosine:
            return optimizer  # the book: constant learning rate
        total = (
            int(self.trainer.estimated_stepping_batches)
            if math.isfinite(self.trainer.estimated_stepping_batches)
            else h.warmup_steps
        )
        scheduler = warmup_cosine(optimizer, h.warmup_steps, total, h.cosine, h.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
