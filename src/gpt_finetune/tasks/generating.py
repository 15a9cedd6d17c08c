"""What every task that generates text shares (instruction tuning, DPO): a prompt style, the step dispatch
and the training throughput; the generation callbacks and every loader take any `GeneratingTask`."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch

from gpt_finetune.tasks.base import FinetuneTask, Stage


class GeneratingTask(FinetuneTask):
    """A GPT built from `model` (the `model/` config spec); `prompt_style` is saved in every checkpoint.

    Subclasses write `_shared_step(batch, stage)` and set `_batch_shape` and `_batch_tokens` (target
    tokens) for each training batch.
    """

    def __init__(
        self,
        model: dict[str, Any],
        prompt_style: str = "alpaca",
        optimizer: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        **renamed: Any,
    ) -> None:
        super().__init__(model, optimizer, lora, **renamed)
        self._batch_shape: tuple[int, ...] = (0, 0)
        self._batch_tokens = 0
        self._batch_ends: deque[tuple[float, int]] = deque(maxlen=11)  # (time, target tokens)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: Stage) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_validation_start(self) -> None:
        self._batch_ends.clear()  # validation time is not training time

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Target (non-padding) tokens/s of the last 10 batches, wall time between batch ends, all ranks."""
        self._batch_ends.append((time.perf_counter(), self._batch_tokens))
        if len(self._batch_ends) > 1:
            elapsed = self._batch_ends[-1][0] - self._batch_ends[0][0]
            tokens = sum(n for _, n in list(self._batch_ends)[1:])
            rate = torch.tensor(tokens / elapsed, device=self.device)
            self.log("train/target_tokens_per_s", rate, batch_size=1, sync_dist=True, reduce_fx="sum")

    @property
    def flops_per_batch(self) -> int:
        """Model FLOPs of the last training batch, forward + backward (ThroughputMonitor's MFU reads it)."""
        rows, width = self._batch_shape
        if not self.lora.enabled:
            return self.model.config.training_flops(rows, width)
        adapters = sum(p.numel() for name, p in self.model.named_parameters() if ".lora_" in name)
        return self.model.config.training_flops(rows, width, frozen=True, adapters=adapters)
