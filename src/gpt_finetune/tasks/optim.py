"""AdamW with the book's or nanoGPT's weight-decay choice, and optional warmup + cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn

DecayOn = Literal["all", "matrices"]


@dataclass(frozen=True)
class AdamWSettings:
    """A task's `optimizer` (conf/optimizer/adamw.yaml): AdamW and its learning-rate schedule."""

    lr: float = 5e-5
    weight_decay: float = 0.1
    decay_on: DecayOn = "all"  # all (book) | matrices (no decay on biases and norms)
    betas: tuple[float, float] = (0.9, 0.999)
    fused_adamw: bool | None = None  # None: fused on CPU / CUDA, unless a GradScaler's gradients clip
    warmup_steps: int = 0
    cosine: bool = False  # cosine decay to min_lr_ratio * lr after warmup
    min_lr_ratio: float = 0.1


def adamw(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    decay_on: DecayOn = "all",
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; `decay_on="all"` is the book, `"matrices"` skips biases and norms.

    `fused=None` picks torch's fused kernel wherever every parameter is a floating tensor on a CPU or CUDA
    device: on a CPU torch would otherwise use its for-loop version (measured: 1.29x faster gpt2-small steps).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if decay_on == "matrices":
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": weight_decay}]
    beta1, beta2 = betas  # a list, where the YAML config gave it
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), fused=fused)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: Callable[[], int],
    cosine: bool,
    min_lr_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then constant, or cosine down to `min_lr_ratio` at `total_steps()`.

    `total_steps` is asked only once the cosine starts, i.e. during training: asking Lightning for it while
    configuring optimizers would build the training DataLoader before a resumed checkpoint is restored.
    """
    total: list[int] = []

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine or step == warmup_steps:
            return 1.0
        total[:] = total or [total_steps()]
        progress = min(1.0, (step - warmup_steps) / max(1, total[0] - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_adamw(module: L.LightningModule, settings: AdamWSettings) -> Any:
    """`configure_optimizers` for a task: AdamW over `module.model`, with the schedule of `settings`."""
    h = settings
    fused = h.fused_adamw
    if fused is None and clips_scaled_gradients(module):
        fused = (
            False  # a fused step unscales GradScaler's gradients inside itself, where no clipping can follow
        )
    model = module.model
    assert isinstance(model, nn.Module)  # every task keeps its GPT in `self.model`
    optimizer = adamw(model, h.lr, h.weight_decay, h.decay_on, h.betas, fused)
    if h.warmup_steps == 0 and not h.cosine:
        return optimizer  # the book: constant learning rate

    def total_steps() -> int:
        steps = module.trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) else h.warmup_steps

    scheduler = warmup_cosine(optimizer, h.warmup_steps, total_steps, h.cosine, h.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def clips_scaled_gradients(module: L.LightningModule) -> bool:
    """Whether the module's trainer clips gradients that a GradScaler scales (16-mixed, unscaled first)."""
    trainer = module._trainer  # None outside a Trainer
    if trainer is None or not trainer.gradient_clip_val:
        return False
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def clip_gradients(
    module: L.LightningModule,
    optimizer: torch.optim.Optimizer,
    clip_val: float | None,
    algorithm: str | None,
) -> None:
    """`configure_gradient_clipping` for every task: Lightning's, except that bf16-mixed clips a fused AdamW.

    Lightning's MixedPrecision refuses to clip any fused optimizer, because a fused step unscales a
    GradScaler's gradients itself; bf16-mixed has no GradScaler, so its gradients are true ones and clip
    like 32-true's. Lightning calls this after `on_before_optimizer_step`: a task's rescaled gradients clip.
    """
    plugin = module.trainer.precision_plugin
    if isinstance(plugin, MixedPrecision) and plugin.scaler is None and clip_val:
        Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
        return
    module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
