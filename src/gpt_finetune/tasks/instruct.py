"""Instruction tuning: GPT-2 with next-token cross-entropy over the targets that are not ignored."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from gpt_finetune.errors import UserError
from gpt_finetune.tasks.base import Stage
from gpt_finetune.tasks.generating import GeneratingTask
from gpt_finetune.tasks.loss import PACKING_KEYS, masked_lm_loss_sum


class InstructionTuning(GeneratingTask):
    """Masked next-token cross-entropy: a mean over every target token of the effective batch."""

    def __init__(
        self,
        model: dict[str, Any],
        prompt_style: str = "alpaca",
        optimizer: dict[str, Any] | None = None,
        head_on_targets_only: bool = True,
        compile: bool = False,
        lora: dict[str, Any] | None = None,
        **renamed: Any,
    ) -> None:
        super().__init__(model, prompt_style, optimizer, lora, **renamed)
        self.add_adapters()  # with task.lora the LM head stays frozen, as the embedding it started from
        self.head_on_targets_only = head_on_targets_only
        self.loss_fn = torch.compile(masked_lm_loss_sum, dynamic=True) if compile else masked_lm_loss_sum
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self._window_tokens = torch.zeros(())  # target tokens in the current accumulation window

    def setup(self, stage: str) -> None:
        """A packed row must fit the model's context (the data's max_length is checked before fitting)."""
        # Lightning sets `trainer.datamodule` for each fit and test; the Trainer class does not declare it.
        pack_length = getattr(getattr(self.trainer, "datamodule", None), "pack_length", None)
        context = self.model.config.context_length
        if pack_length is not None and pack_length > context:
            raise UserError(
                f"data.pack_length={pack_length} exceeds model context {context}; lower data.pack_length"
            )

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: Stage) -> torch.Tensor:
        packing = {key: batch[key] for key in PACKING_KEYS if key in batch}  # a packed batch's layout
        loss_sum, count = self.loss_fn(
            self.model,
            batch["input_ids"],
            batch["targets"],
            head_on_targets_only=self.head_on_targets_only,
            **packing,
        )
        if stage != "train":
            # Token-weighted mean over the whole split, not a mean of per-batch means.
            getattr(self, f"{stage}_loss").update(loss_sum.detach() / count.clamp(min=1), weight=count)
            return loss_sum
        self._window_tokens = self._window_tokens.to(count.device) + count
        self._batch_shape, self._batch_tokens = tuple(batch["input_ids"].shape), int(count)
        shown_sum, shown_count = loss_sum.detach(), count
        if self.trainer.world_size > 1:  # log the global token mean, as one process would compute it
            shown_sum = self.trainer.strategy.reduce(shown_sum, reduce_op="sum")
            shown_count = self.trainer.strategy.reduce(count, reduce_op="sum")
        mean = shown_sum / shown_count.clamp(min=1)
        self.log_loss("train", mean, batch_size=self._batch_shape[0])
        # The summed loss goes back to Lightning; on_before_optimizer_step turns the gradients into a mean
        # over every target token of the effective batch (all micro-batches, all ranks).
        return loss_sum

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        tokens = self._window_tokens
        if self.trainer.world_size > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        # Lightning divided each micro-batch loss by accumulate_grad_batches, and DDP averaged over ranks.
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / tokens.clamp(min=1)
        for param in self.parameters():
            if param.grad is not None:
                param.grad.mul_(scale.to(param.grad.dtype))
        self._window_tokens = torch.zeros((), device=tokens.device)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, stage: Stage) -> None:
        metric = getattr(self, f"{stage}_loss")
        loss = metric.compute()
        metric.reset()
        self.log_loss(stage, loss, sync_dist=True)
        self.log(f"{stage}/ppl", torch.exp(loss.clamp(max=50)), sync_dist=True)
