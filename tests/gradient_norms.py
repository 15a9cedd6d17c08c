"""A callback for the clipping tests: the gradient norm each optimizer step used."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class GradientNorms(L.Callback):
    """The total gradient norm each optimizer step used (gradients stay until the next zero_grad)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        grads = [p.grad.float() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
